"""int8 embeddings: quantisation, recall against f32, re-scoring, and path agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import localrank
from numpy_reference import assert_same, reference_scores

KERNELS = localrank.available_kernels()


def test_quantize_int8_codes_and_least_squares_scales() -> None:
    rng = np.random.default_rng(0)
    E = rng.standard_normal((500, 37)).astype(np.float32) * rng.uniform(0.01, 100, (500, 1))
    E[7] = 0.0  # an all-zero row has scale 0
    q, scale = localrank.quantize_int8(E)
    assert q.dtype == np.int8 and q.shape == E.shape
    assert scale.dtype == np.float32 and scale.shape == (500,)
    assert q.min() >= -127 and q.max() <= 127
    assert scale[7] == 0 and not q[7].any()
    live = scale > 0
    E64, q64 = E[live].astype(np.float64), q[live].astype(np.float64)
    # the scale is the least-squares fit for the codes: argmin_s |E - s q|^2 = E·q / q·q
    fitted = (E64 * q64).sum(1) / (q64 * q64).sum(1)
    np.testing.assert_allclose(scale[live], fitted, rtol=1e-6)
    # the codes are a nearest rounding: within one step of E / scale everywhere
    assert np.all(np.abs(q64 - E64 / fitted[:, None]) <= 1.0 + 1e-6)
    # and no row reconstructs worse than plain max-abs quantisation
    s0 = np.abs(E64).max(1) / 127
    plain = np.clip(np.round(E64 / s0[:, None]), -127, 127) * s0[:, None]
    err = ((q64 * scale[live, None] - E64) ** 2).sum(1)
    err_plain = ((plain - E64) ** 2).sum(1)
    assert np.all(err <= err_plain * (1 + 1e-5) + 1e-12)


def gaussian_catalog(n: int, d: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n, d)).astype(np.float32)
    zeros = np.zeros(n, np.float32)
    return E, zeros, np.zeros(n, np.int32), np.zeros(1, np.float32), np.ones(n, bool)


@pytest.mark.parametrize("kernel", KERNELS)
def test_recall_at_10_against_f32_is_at_least_099(kernel: str) -> None:
    """Gaussian data, bias/prior/adjust zero, as the issue specifies: recall@10 ≥ 0.99.

    Measured at n = 1000, d = 64 over 5 catalogs × 1000 Gaussian users (fixed seeds). Over 30
    other catalogs × 1000 users the recall was 0.9912 on average with a per-catalog standard
    deviation of 0.0008, so this 5-catalog mean has a standard error of about 0.00036 and a
    correct kernel lands below 0.99 with probability ~2e-4 for a fresh choice of seeds. Recall falls
    slowly with n (0.989 at 10k, 0.988 at 100k: docs/kernel.md), the limit of per-row int8 on
    isotropic data; ``rescore`` recovers the f32 result exactly (next test).
    """
    n, d, users, catalogs = 1000, 64, 1000, 5
    hits = 0
    for c in range(catalogs):
        E, bias, cat, prior, elig = gaussian_catalog(n, d, seed=10 + c)
        q, scale = localrank.quantize_int8(E)
        rng = np.random.default_rng(20 + c)
        for _ in range(users):
            u = rng.standard_normal(d).astype(np.float32)
            exact, _ = localrank.score_topk(u, E, bias, cat, prior, elig, k=10)
            approx, _ = localrank.score_topk_int8(u, q, scale, bias, cat, prior, elig, k=10,
                                                  _kernel=kernel)
            hits += len(set(exact.tolist()) & set(approx.tolist()))
    recall = hits / (10 * users * catalogs)
    print(f"path {kernel}: int8 recall@10 = {recall:.4f}")
    assert recall >= 0.99


@pytest.mark.parametrize("kernel", KERNELS)
def test_rescore_gives_the_f32_result(kernel: str) -> None:
    n, d = 20_000, 64
    E, bias, cat, prior, elig = gaussian_catalog(n, d, seed=3)
    q, scale = localrank.quantize_int8(E)
    rng = np.random.default_rng(4)
    for _ in range(100):
        u = rng.standard_normal(d).astype(np.float32)
        idx, scores = localrank.score_topk_int8(u, q, scale, bias, cat, prior, elig, k=10,
                                                rescore=E, _kernel=kernel)
        want = reference_scores(u, E, bias, cat, prior, elig)
        assert_same(idx, want, elig, 10)
        f32_idx, f32_scores = localrank.score_topk(u, E, bias, cat, prior, elig, k=10,
                                                   _kernel=kernel)
        # Re-scoring runs the f32 kernel's own arithmetic, so it is bit-identical to it.
        np.testing.assert_array_equal(idx, f32_idx)
        np.testing.assert_array_equal(scores, f32_scores)


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_paths_are_bit_identical_to_scalar(kernel: str) -> None:
    rng = np.random.default_rng(5)
    for d in [1, 5, 31, 32, 33, 64, 100, 1000]:
        n = 3000
        q = rng.integers(-128, 128, (n, d)).astype(np.int8)  # stored rows may hold -128
        scale = rng.uniform(0, 2, n).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        cat = rng.integers(0, 4, n).astype(np.int32)
        prior = rng.standard_normal(4).astype(np.float32)
        elig = rng.random(n) < 0.7
        adjust = rng.standard_normal(n).astype(np.float32)
        u = rng.standard_normal(d).astype(np.float32)
        args = (u, q, scale, bias, cat, prior, elig)
        want = localrank.score_topk_int8(*args, adjust=adjust, k=40, _kernel="scalar")
        got = localrank.score_topk_int8(*args, adjust=adjust, k=40, _kernel=kernel)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    print(f"path {kernel}: int8 bit-identical to scalar")


def test_int8_threads_and_ties() -> None:
    n, d = 60_000, 16
    q = np.ones((n, d), np.int8)
    scale = np.ones(n, np.float32)
    z = np.zeros(n, np.float32)
    idx, scores = localrank.score_topk_int8(
        np.ones(d, np.float32), q, scale, z, np.zeros(n, np.int32), np.zeros(1, np.float32),
        np.ones(n, bool), k=5, threads=2,
    )
    assert idx.tolist() == [0, 1, 2, 3, 4]
    assert len(set(scores.tolist())) == 1


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 3000),
    d=st.integers(1, 70),
    share=st.sampled_from([0.0, 0.05, 0.5, 0.62, 0.9, 1.0]),
    k=st.integers(1, 40),
    threads=st.integers(2, 9),
    rescore=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_int8_threads_equal_one_thread_ties_included(
    kernel: str, n: int, d: int, share: float, k: int, threads: int, rescore: bool, seed: int
) -> None:
    """Small-integer rows tie often; any split, and `threads=None`, give exactly the
    one-thread result, which is "the same" as the reference on the dequantised rows."""
    rng = np.random.default_rng(seed)
    E = rng.integers(-3, 4, (n, d)).astype(np.float32)
    q, scale = localrank.quantize_int8(E)
    # Values in [-2, 2] with one at 2 quantise exactly (±1 is 63.5 steps: hi 64, lo -127), so
    # the int8 scores differ from the dequantised reference by f32 rounding alone.
    u = rng.integers(-2, 3, d).astype(np.float32)
    u[0] = 2.0
    bias = rng.integers(-2, 3, n).astype(np.float32)
    cat = rng.integers(0, 4, n).astype(np.int32)
    prior = rng.integers(-2, 3, 4).astype(np.float32)
    elig = rng.random(n) < share
    args = (u, q, scale, bias, cat, prior, elig)
    kw = {"k": k, "rescore": E if rescore else None, "_kernel": kernel}
    one = localrank.score_topk_int8(*args, threads=1, **kw)
    for got in (localrank.score_topk_int8(*args, threads=threads, **kw),
                localrank.score_topk_int8(*args, **kw)):
        np.testing.assert_array_equal(got[0], one[0])
        np.testing.assert_array_equal(got[1], one[1])
    dequantised = (q.astype(np.float32) * scale[:, None]).astype(np.float32)
    want = reference_scores(u, E if rescore else dequantised, bias, cat, prior, elig)
    if not rescore:
        # The user vector's quantisation is exact here (see above): within the tolerance.
        assert_same(one[0], want, elig, k)
    else:
        # Re-scored in f32 from small integers: exact, so exactly the reference, ties included.
        want_top = np.lexsort((np.flatnonzero(elig), -want[elig]))
        np.testing.assert_array_equal(one[0], np.flatnonzero(elig)[want_top][:k])
