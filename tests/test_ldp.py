"""The device-side randomisers and the central-mode noise: exact privacy ratios, sampled
frequencies, packing, property tests against a numpy reference, and input validation.

Statistical checks use fresh OS randomness and state their false-failure rates; all rates in
this file add up to below 1e-3.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from localrank import _core
from localrank.errors import InputError
from localrank.privacy import oracles as ldp

DOMAINS = [2, 3, 24, 25, 256, 10**6, 2**32]
EPSILONS = [0.01, 0.5, 1.0, 2.0, 4.0, 10.0, 30.0, 50.0]


# --- exact privacy ratios ---------------------------------------------------------------------


@pytest.mark.parametrize("d", DOMAINS)
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_grr_ratio_is_e_to_the_epsilon(d: int, epsilon: float) -> None:
    p, q = ldp.probabilities("grr", d, epsilon)
    # A few ulps: p and q are each within an ulp or two of exact.
    assert math.isclose(p / q, math.exp(epsilon), rel_tol=1e-14)
    assert math.isclose(p + (d - 1) * q, 1.0, rel_tol=1e-14)


@pytest.mark.parametrize("d", DOMAINS)
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_oue_odds_ratio_is_e_to_the_epsilon(d: int, epsilon: float) -> None:
    p, q = ldp.probabilities("oue", d, epsilon)
    assert p == 0.5
    assert math.isclose(p * (1 - q) / ((1 - p) * q), math.exp(epsilon), rel_tol=1e-14)


@pytest.mark.parametrize("oracle", ["grr", "oue"])
@pytest.mark.parametrize(("epsilon", "epsilon_perm"), [(2.0, 4.0), (1.0, 1.0), (4.0, 0.5)])
def test_one_chained_report_leaks_at_most_either_stage(
    oracle: str, epsilon: float, epsilon_perm: float
) -> None:
    for d in (2, 5, 256):
        eff = ldp.effective_epsilon(oracle, d, epsilon, epsilon_perm)
        assert 0 < eff <= min(epsilon, epsilon_perm) * (1 + 1e-12)
        assert ldp.effective_epsilon(oracle, d, epsilon, None) == pytest.approx(epsilon, 1e-13)


def test_choice_by_variance() -> None:
    # 3e^2 + 2 = 24.17
    assert ldp.choose_oracle(24, 2.0) is ldp.Oracle.GRR
    assert ldp.choose_oracle(25, 2.0) is ldp.Oracle.OUE
    assert ldp.choose_oracle(256, 2.0) is ldp.Oracle.OUE


# --- sampled frequencies ----------------------------------------------------------------------

#: Per-cell threshold of the binomial checks below: two-sided P(|N(0,1)| > 5.2) = 2.0e-7. Each
#: test checks at most 257 cells, so a correct sampler fails one with probability below 5.1e-5
#: (Bonferroni; the counts are near-normal, with m·q ≥ 700 expected per cell), and the four
#: such tests below together below 2.1e-4.
Z_CELL = 5.2


def assert_binomial(counts: npt.NDArray[np.int64], m: int, probability: float, what: str) -> None:
    """Every count is within Z_CELL standard deviations of Binomial(m, probability)."""
    z = (counts - m * probability) / math.sqrt(m * probability * (1 - probability))
    worst = int(np.argmax(np.abs(z)))
    assert abs(z[worst]) < Z_CELL, f"{what}: cell {worst} is {z[worst]:+.2f} sd off"


@pytest.mark.parametrize("epsilon_perm", [None, 4.0])
def test_grr_frequencies_match_p_and_q(epsilon_perm: float | None) -> None:
    """m = 200k devices hold value 17 of d = 256 at ε = 2. The report equals 17 ~ Bin(m, p);
    each of the other 255 values ~ Bin(m, q) (m·q = 762), which also catches a visibly
    non-uniform choice of the other value (such as an 8-bit draw taken modulo 255). Chained
    reports are checked against (p*, q*)."""
    d, m, v = 256, 200_000, 17
    values = np.full(m, v)
    if epsilon_perm is None:
        reports = ldp.perturb("grr", values, d, 2.0)
    else:
        memo = ldp.permanent_response("grr", values, d, epsilon_perm)
        reports = ldp.instantaneous_response("grr", memo, d, 2.0)
    p, q = ldp.effective_probabilities("grr", d, 2.0, epsilon_perm)
    counts = np.bincount(reports, minlength=d)
    assert counts.size == d
    assert_binomial(counts[[v]], m, p, "true value")
    assert_binomial(np.delete(counts, v), m, q, "other values")


@pytest.mark.parametrize("epsilon_perm", [None, 4.0])
def test_oue_frequencies_match_p_and_q(epsilon_perm: float | None) -> None:
    """m = 20k devices hold value 200 of d = 256 at ε = 2. Bit 200 ~ Bin(m, p), each other bit
    ~ Bin(m, q) (m·q = 2384). Chained reports are checked against (p*, q*)."""
    d, m, v = 256, 20_000, 200
    values = np.full(m, v)
    if epsilon_perm is None:
        reports = ldp.perturb("oue", values, d, 2.0)
    else:
        memo = ldp.permanent_response("oue", values, d, epsilon_perm)
        reports = ldp.instantaneous_response("oue", memo, d, 2.0)
    assert reports.dtype == np.uint8 and reports.shape == (m, 32)
    p, q = ldp.effective_probabilities("oue", d, 2.0, epsilon_perm)
    counts = ldp.unpack_bits(reports, d).sum(axis=0)
    assert_binomial(counts[[v]], m, p, "hot bit")
    assert_binomial(np.delete(counts, v), m, q, "cold bits")


def test_os_randomness_is_fresh_and_seeds_repeat() -> None:
    values = np.arange(1000) % 256
    a = ldp.perturb("oue", values, 256, 1.0)
    b = ldp.perturb("oue", values, 256, 1.0)
    assert not np.array_equal(a, b)  # 256k bits agreeing by chance: probability < 2^-100000
    for oracle in ("grr", "oue"):
        s1 = ldp.perturb(oracle, values, 256, 1.0, seed=7)
        s2 = ldp.perturb(oracle, values, 256, 1.0, seed=7)
        np.testing.assert_array_equal(s1, s2)
        assert not np.array_equal(s1, ldp.perturb(oracle, values, 256, 1.0, seed=8))


# --- packing ----------------------------------------------------------------------------------


def test_oue_bits_are_packed_lsb_first() -> None:
    # At ε = 50, q < 2e-22: only the true value's bit can be set (with probability 1/2).
    d = 10
    reports = ldp.perturb("oue", np.full(400, 9), d, 50.0)
    assert reports.shape == (400, 2)
    rows = {tuple(r) for r in reports.tolist()}
    assert rows == {(0, 0), (0, 0b10)}  # bit 9 is bit 1 of byte 1
    bits = ldp.unpack_bits(reports, d)
    np.testing.assert_array_equal(ldp.pack_bits(bits), reports)
    assert ldp.encode_bits(np.array([0, 0b10], np.uint8)) == base64.b64encode(b"\x00\x02").decode()


def test_wire_bits_round_trip() -> None:
    for d in (2, 8, 9, 256, 1000):
        reports = ldp.perturb("oue", np.arange(5) % d, d, 1.0)
        for row in reports:
            text = ldp.encode_bits(row)
            np.testing.assert_array_equal(ldp.decode_bits(text, d), row)
        assert ldp.packed_len(d) == reports.shape[1]


@pytest.mark.parametrize(
    "text",
    [
        "not base64!",
        "AAA",
        base64.b64encode(b"\x00\x00\x00").decode(),
        base64.b64encode(b"\x00\x04").decode(),
    ],
)
def test_malformed_wire_bits_are_refused(text: str) -> None:
    # d = 10: two bytes, and bits 10..15 (0x04 is bit 10) must be zero.
    with pytest.raises(InputError, match=r"^bits:"):
        ldp.decode_bits(text, 10)


# --- the Randomizer ---------------------------------------------------------------------------


def test_randomizer_chains_the_two_stages() -> None:
    r = ldp.Randomizer.for_domain(256, 2.0, 4.0)
    assert r.oracle is ldp.Oracle.OUE
    assert r.probabilities == ldp.effective_probabilities("oue", 256, 2.0, 4.0)
    assert 0 < r.report_epsilon < 2.0
    memo = r.permanent([3, 200])
    wire = r.instantaneous(memo)
    assert memo.shape == wire.shape == (2, 32) and wire.dtype == np.uint8
    g = ldp.Randomizer(ldp.Oracle("grr"), 10, 2.0, 4.0)
    assert g.oracle is ldp.Oracle.GRR
    assert ldp.Randomizer.for_domain(10, 2.0, 4.0) == g
    out = g.instantaneous(g.permanent(np.arange(10)))
    assert out.dtype == np.int64 and out.shape == (10,) and out.min() >= 0 and out.max() < 10
    with pytest.raises(InputError, match=r"^epsilon_perm:"):
        ldp.Randomizer(ldp.Oracle.GRR, 10, 2.0, 0.0)


# --- discrete Laplace -------------------------------------------------------------------------


def discrete_laplace_moments(alpha: float) -> tuple[float, float]:
    """Variance and fourth moment of the discrete Laplace with ratio alpha, by summing the pmf."""
    z = np.arange(-5000, 5001, dtype=np.float64)
    pmf = (1 - alpha) / (1 + alpha) * alpha ** np.abs(z)
    return float(pmf @ z**2), float(pmf @ z**4)


@pytest.mark.parametrize(("epsilon", "sensitivity"), [(1, 1), (Fraction(1, 2), 3), (0.7, 2)])
def test_discrete_laplace_pmf_and_variance(epsilon: float, sensitivity: int) -> None:
    """N = 10^6 draws. Checks, each at |z| ≤ 4.5 (two-sided 6.8e-6), 8 per case, 3 cases:
    a false failure below 1.7e-4 in all.

    - Neighbouring pmf ratios: log(n_k/n_{k+1}) estimates ε/Δ; for multinomial counts its
      variance is 1/(N·p_k) + 1/(N·p_{k+1}) to first order (the −1/N covariance terms cancel
      the −p/N ones), estimated with the observed counts. k = 0, 1, 2 and their mirrors.
    - The variance: the sample variance has sd sqrt((μ4 − σ⁴)/N), from the exact pmf.
    - The mean, 0, with sd σ/sqrt(N).
    """
    rate = float(Fraction(epsilon)) / sensitivity
    alpha = math.exp(-rate)
    n = 1_000_000
    noisy = ldp.discrete_laplace(np.zeros(n, dtype=np.int64), epsilon, sensitivity)
    assert noisy.dtype == np.int64
    values, counts = np.unique(noisy, return_counts=True)
    count = dict(zip(values.tolist(), counts.tolist(), strict=True))
    for k in (0, 1, 2):
        for sign in (1, -1):
            a, b = count[sign * k], count[sign * (k + 1)]
            z = (math.log(a / b) - rate) / math.sqrt(1 / a + 1 / b)
            assert abs(z) <= 4.5, f"ratio P({sign * k})/P({sign * (k + 1)}): {z:+.2f} sd"
    var, fourth = discrete_laplace_moments(alpha)
    assert math.isclose(var, 2 * alpha / (1 - alpha) ** 2, rel_tol=1e-9)
    sample_var = float(np.mean(noisy.astype(np.float64) ** 2))
    z_var = (sample_var - var) / math.sqrt((fourth - var**2) / n)
    assert abs(z_var) <= 4.5, f"variance {sample_var:.4f} vs {var:.4f}: {z_var:+.2f} sd"
    z_mean = float(noisy.mean()) / math.sqrt(var / n)
    assert abs(z_mean) <= 4.5


def test_discrete_laplace_keeps_shape_and_adds_to_counts() -> None:
    counts = np.arange(12, dtype=np.int64).reshape(3, 4) * 1000
    noisy = ldp.discrete_laplace(counts, 1000, 1)  # α = e^-1000: no noise in practice
    np.testing.assert_array_equal(noisy, counts)
    noisy = ldp.discrete_laplace(counts, Fraction(1, 10), 2, seed=3)
    assert noisy.shape == (3, 4) and noisy.dtype == np.int64
    np.testing.assert_array_equal(noisy, ldp.discrete_laplace(counts, Fraction(1, 10), 2, seed=3))
    assert ldp.discrete_laplace(5, 1, 1).shape == ()


# --- property tests against a numpy reference -------------------------------------------------


def reference_probabilities(oracle: str, d: int, epsilon: float) -> tuple[float, float]:
    e = np.exp(np.float64(epsilon))
    if oracle == "grr":
        return float(e / (e + d - 1)), float(1 / (e + d - 1))
    return 0.5, float(1 / (e + 1))


def reference_chain(
    oracle: str, d: int, epsilon: float, epsilon_perm: float
) -> tuple[float, float]:
    """(p*, q*) by multiplying the two stages' transition matrices."""

    def stage(eps: float) -> npt.NDArray[np.float64]:
        p, q = reference_probabilities(oracle, d, eps)
        if oracle == "grr":
            return np.full((d, d), q) + np.eye(d) * (p - q)
        return np.array([[1 - q, q], [1 - p, p]])  # rows: input bit 0, 1

    m = stage(epsilon_perm) @ stage(epsilon)
    return (float(m[0, 0]), float(m[0, 1])) if oracle == "grr" else (float(m[1, 1]), float(m[0, 1]))


@settings(max_examples=300, deadline=None)
@given(
    oracle=st.sampled_from(["grr", "oue"]),
    d=st.integers(2, 2**32),
    epsilon=st.floats(1e-3, 50.0),
)
def test_probabilities_match_reference(oracle: str, d: int, epsilon: float) -> None:
    got = ldp.probabilities(oracle, d, epsilon)
    np.testing.assert_allclose(got, reference_probabilities(oracle, d, epsilon), rtol=1e-13)
    threshold = 3 * math.exp(epsilon) + 2
    assume(abs(d - threshold) > 1e-6 * threshold)
    expected = ldp.Oracle.GRR if d < threshold else ldp.Oracle.OUE
    assert ldp.choose_oracle(d, epsilon) is expected


@settings(max_examples=200, deadline=None)
@given(
    oracle=st.sampled_from(["grr", "oue"]),
    d=st.integers(2, 12),
    epsilon=st.floats(1e-2, 12.0),
    epsilon_perm=st.floats(1e-2, 12.0),
)
def test_chained_probabilities_match_matrix_product(
    oracle: str, d: int, epsilon: float, epsilon_perm: float
) -> None:
    got = ldp.effective_probabilities(oracle, d, epsilon, epsilon_perm)
    np.testing.assert_allclose(got, reference_chain(oracle, d, epsilon, epsilon_perm), rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.integers(0, 299), max_size=50), oracle=st.sampled_from(["grr", "oue"]))
def test_outputs_are_well_formed(values: list[int], oracle: str) -> None:
    d = 300
    out = ldp.perturb(oracle, np.asarray(values, dtype=np.int64), d, 1.0)
    if oracle == "grr":
        assert out.shape == (len(values),) and out.dtype == np.int64
        assert np.all((out >= 0) & (out < d))
    else:
        assert out.shape == (len(values), 38) and out.dtype == np.uint8
        assert np.all(out[:, -1] >> 4 == 0)  # 300 = 37·8 + 4: the top 4 bits are padding


# --- bad input --------------------------------------------------------------------------------

Call = Callable[[], object]
#: Two d = 9 reports; the second has bit 9 (bit 1 of its last byte), which is padding, set.
PADDED_BITS = np.array([[0, 0], [0, 2]], np.uint8)

BAD: list[tuple[str, Call]] = [
    ("oracle", lambda: ldp.probabilities("rappor", 4, 1.0)),
    ("oracle", lambda: _core.ldp_probabilities(3, 4, 1.0)),  # type: ignore[arg-type]
    ("d", lambda: ldp.probabilities("grr", 1, 1.0)),
    ("d", lambda: ldp.probabilities("grr", -5, 1.0)),
    ("d", lambda: ldp.probabilities("grr", 2**32 + 1, 1.0)),
    ("d", lambda: ldp.probabilities("grr", 2**70, 1.0)),
    ("d", lambda: ldp.choose_oracle("4", 1.0)),  # type: ignore[arg-type]
    ("epsilon", lambda: ldp.probabilities("grr", 4, 0.0)),
    ("epsilon", lambda: ldp.probabilities("oue", 4, -1.0)),
    ("epsilon", lambda: ldp.probabilities("oue", 4, math.nan)),
    ("epsilon", lambda: ldp.probabilities("oue", 4, math.inf)),
    ("epsilon", lambda: ldp.probabilities("oue", 4, 51.0)),
    ("epsilon", lambda: ldp.choose_oracle(4, "2")),  # type: ignore[arg-type]
    ("epsilon_perm", lambda: ldp.effective_probabilities("grr", 4, 1.0, 0.0)),
    ("epsilon_perm", lambda: ldp.permanent_response("oue", [0], 4, math.nan)),
    ("values", lambda: ldp.perturb("grr", [0, 4], 4, 1.0)),
    ("values", lambda: ldp.perturb("oue", [-1], 4, 1.0)),
    ("values", lambda: ldp.perturb("grr", np.array([0.5]), 4, 1.0)),
    ("values", lambda: ldp.perturb("grr", np.zeros((2, 2), np.int64), 4, 1.0)),
    ("values", lambda: ldp.permanent_response("grr", [9], 4, 1.0)),
    ("values", lambda: ldp.perturb("grr", np.array([2**64 - 1], np.uint64), 4, 1.0)),
    ("permanent", lambda: ldp.instantaneous_response("grr", [4], 4, 1.0)),
    ("permanent", lambda: ldp.instantaneous_response("oue", np.zeros((2, 2), np.int64), 9, 1.0)),
    ("permanent", lambda: ldp.instantaneous_response("oue", np.zeros((2, 3), np.uint8), 9, 1.0)),
    ("permanent", lambda: ldp.instantaneous_response("oue", np.zeros(4, np.uint8), 9, 1.0)),
    ("permanent", lambda: ldp.instantaneous_response("oue", PADDED_BITS, 9, 1.0)),
    ("seed", lambda: ldp.perturb("grr", [0], 4, 1.0, seed=-1)),
    ("seed", lambda: ldp.perturb("oue", [0], 4, 1.0, seed=2**64)),
    ("counts", lambda: ldp.discrete_laplace(np.array([0.5]), 1, 1)),
    ("counts", lambda: ldp.discrete_laplace(["a"], 1, 1)),
    # Each overflows unless its noise is ≤ 0 (probability ~1/2): all 64 do with p ~ 5e-20.
    ("counts", lambda: ldp.discrete_laplace(np.full(64, 2**63 - 1), Fraction(1, 10**6), 1)),
    ("epsilon", lambda: ldp.discrete_laplace([0], 0, 1)),
    ("epsilon", lambda: ldp.discrete_laplace([0], -1.5, 1)),
    ("epsilon", lambda: ldp.discrete_laplace([0], math.nan, 1)),
    ("epsilon", lambda: ldp.discrete_laplace([0], math.inf, 1)),
    ("epsilon", lambda: ldp.discrete_laplace([0], "1", 1)),  # type: ignore[arg-type]
    ("epsilon", lambda: ldp.discrete_laplace([0], Fraction(1, 2**64), 1)),
    ("epsilon", lambda: ldp.discrete_laplace([0], Fraction(1, 2**40), 1)),  # ε/Δ < 2^-32
    # 1e-6 as a double is 4722366482869645/2^72: its denominator does not fit.
    ("epsilon", lambda: ldp.discrete_laplace([0], 1e-6, 1)),
    ("sensitivity", lambda: ldp.discrete_laplace([0], 1, 0)),
    ("sensitivity", lambda: ldp.discrete_laplace([0], 1, -3)),
    ("sensitivity", lambda: ldp.discrete_laplace([0], 1, 2**33)),
    ("sensitivity", lambda: ldp.discrete_laplace([0], 1, 1.5)),  # type: ignore[arg-type]
    ("seed", lambda: ldp.discrete_laplace([0], 1, 1, seed=-1)),
    ("packed", lambda: ldp.unpack_bits(np.zeros((2, 3), np.uint8), 9)),
    ("packed", lambda: ldp.encode_bits(np.zeros((2, 2), np.uint8))),
]


@pytest.mark.parametrize(("arg", "call"), BAD, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_names_the_argument(arg: str, call: Call) -> None:
    with pytest.raises(InputError, match=rf"^{arg}:"):
        call()


@pytest.mark.parametrize("d", [2, 5, 20, 25, 37, 40, 100, 1000])
@pytest.mark.parametrize("eps,eps_perm", [(2.0, 4.0), (1.0, 2.0), (0.5, 4.0)])
def test_the_chained_choice_has_the_smaller_chained_variance(
    d: int, eps: float, eps_perm: float
) -> None:
    """The oracle picked for the chained report has the smaller per-report variance of a
    de-biased count, from each oracle's effective probabilities; at ε = 2, ε_perm = 4 and
    d = 25 (the evaluation's domain) that is GRR, where the single-stage rule says OUE."""

    def var(o: ldp.Oracle) -> float:
        p, q = ldp.effective_probabilities(o, d, eps, eps_perm)
        return q * (1 - q) / (p - q) ** 2

    chosen = ldp.choose_chained_oracle(d, eps, eps_perm)
    other = ldp.Oracle.OUE if chosen is ldp.Oracle.GRR else ldp.Oracle.GRR
    assert var(chosen) <= var(other)
    if (d, eps, eps_perm) == (25, 2.0, 4.0):
        assert chosen is ldp.Oracle.GRR and ldp.choose_oracle(d, eps) is ldp.Oracle.OUE
