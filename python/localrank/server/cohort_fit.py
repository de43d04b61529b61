"""Learned interest cohorts, server side: offer factors from cohort aggregates, and k-means over
rounds without seeing any member.

**The data.** Each cohort ``c`` is a pseudo-user. Its row is its (noised, de-biased) engagement
count per offer, ``R[c, i]``, clipped at 0, and its population ``n_c`` (the census' estimate).
Its target is the rate ``p_ci = R[c, i] / n_c``: the mean of its members' 0/1 engagement
vectors.

**Weighted implicit ALS** (:func:`fit_offer_factors`) minimises

    J(U, V) = Σ_c n_c [Σ_i (1 + α·p_ci)(p_ci − u_c·v_i)² + λ‖u_c‖²] + λ_V Σ_i ‖v_i‖²

over cohort factors ``U`` and offer factors ``V`` (``f`` columns). Rows weigh by cohort size:
with ``α = 0``, ``n_c Σ_i (p_ci − u·v_i)²`` equals, up to a constant, the members' own squared
errors when all of them share ``u``; ``α`` adds confidence where a cohort engages more. Each
half-step solves its block exactly, so ``J`` never increases. ``V`` is warm-started from the
previous bundle's factors (the server keeps no other state).

**Centroids** (:func:`centroid_update`) are the fold-ins of the cohorts' rows,
``(VᵀV + λI)⁻¹ Vᵀ p_c``: with confidence 1 that is exactly the mean of the members' own
fold-ins (:func:`localrank.device.fold_in.fold_in` with weight 1), so publishing them and
letting devices re-pick the nearest is one k-means step per round.

**One round** (:func:`cohort_round`): merge every cohort whose population's lower bound is below
``min_population`` into its nearest neighbour (the merged row is the sum of the rows); fit ``V``;
recompute the centroids; split the largest cohorts while there are fewer than
``n_devices / (1.5·min_population)``; give every centroid the previous round's id of the most
similar previous cohort (:func:`match_ids`: greedy on the cosine of predicted offer rates
``V·c``, where a previous cohort's ``c`` is the fold-in of the row its members just reported,
under this round's ``V``, so both sides share one basis even when ``V`` changed completely), so
an id keeps "about the same taste" and devices do not spend a fresh permanent-response memo
every round.

**Round 0** (:func:`initial_model`): before any aggregate, ``V`` and the cohorts come from
public content, the catalog's categories.

**Determinism.** Same inputs, same machine, same numpy and BLAS (:func:`fit_provenance`): the
same bytes. No randomness is drawn (the content jitter is hashed, like the content embeddings),
ties break by index, and every sum runs in ``np.einsum`` without BLAS (OpenBLAS splits a long
summed dimension across threads, which changed the bits between 1 and 2 threads), so the BLAS
thread count does not matter; the tests check that. The only LAPACK calls are batched f × f
solves and f × f inverses, each on single small matrices.
"""

from __future__ import annotations

import hashlib
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from localrank.bundle.cohorts import (
    FACTOR_ENCODINGS,
    CohortPayload,
    FactorEncoding,
    decode_factors,
    encode_factors,
    gram_inverse,
)
from localrank.errors import InputError

__all__ = [
    "COHORT_FIT_METHOD",
    "AlsFit",
    "CohortModel",
    "CohortRound",
    "CohortSettings",
    "als_objective",
    "centroid_update",
    "cohort_round",
    "content_cohorts",
    "content_factors",
    "fit_offer_factors",
    "fit_provenance",
    "initial_model",
    "match_ids",
    "merge_small",
    "rates",
    "signal_shares",
    "split_largest",
    "target_cohorts",
]

COHORT_FIT_METHOD = "cohort-als-1"
#: The 95% interval's half-width in standard deviations, as for every segment's population.
Z95 = 1.96


@dataclass(frozen=True)
class CohortSettings:
    """The fit's knobs (``docs/`` states the defaults' reasons once the lead wires them)."""

    factors: int = 32
    #: λ: the fold-in's and the cohort solve's ridge, in the units of one device's 0/1 vector.
    regularization: float = 1.0
    #: λ_V: the offer solve's ridge, in devices (rows weigh by population).
    offer_regularization: float = 10.0
    #: α: confidence ``1 + α·rate``.
    alpha: float = 0.0
    iterations: int = 10
    min_population: int = 50
    #: Aim at ``n_devices / (per_cohort · min_population)`` cohorts.
    per_cohort: float = 1.5
    #: Split only a cohort whose population's lower bound is ≥ ``split_at · min_population``.
    split_at: float = 2.5
    #: The children's offset from the parent, as a share of the parent centroid's length.
    split_step: float = 0.25
    #: An id carries over only to a centroid whose taste has at least this cosine with it.
    min_similarity: float = 0.5
    encoding: FactorEncoding = "float16"
    #: Shrink each offer's factors toward the previous round's (λ_V·‖v_i − v_i⁰‖²) instead of
    #: toward 0: with few cohort rows the fit only informs the directions those rows span, and
    #: the others keep what the previous round (round 0: the public content) knew.
    anchor: bool = False
    #: Fit the factors on every cohort's own row before merging (ldp: each row is already
    #: protected on the device; merging is for what is published), not on the merged rows.
    fit_unmerged: bool = False
    #: Keep the *learning* cohorts apart from the *published* ones (ldp; :func:`cohort_round`):
    #: merging decides only what is published, so the centroids the fit learns from survive a
    #: small fleet's rounds instead of collapsing into one.
    fine_cohorts: bool = False
    #: A learning cohort lives while its engagement is that of ≥ ``fine_floor · min_population``
    #: devices (of the mean cohort's, while the fleet is smaller than that per cohort).
    fine_floor: float = 0.25

    def __post_init__(self) -> None:
        def need(ok: bool, arg: str, expected: str) -> None:
            if not ok:
                raise InputError(f"{arg}: expected {expected}, got {getattr(self, arg)!r}")

        for name in ("factors", "iterations", "min_population"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "an int ≥ 1")
        for name in ("regularization", "offer_regularization", "per_cohort", "split_step"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, name, "a number > 0")

        def number(name: str) -> bool:
            v = getattr(self, name)
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(number("alpha") and self.alpha >= 0, "alpha", "a number ≥ 0")
        need(number("fine_floor") and 0 < self.fine_floor <= 1, "fine_floor", "a number in (0, 1]")
        need(number("split_at") and self.split_at >= 2, "split_at", "a number ≥ 2")
        need(
            number("min_similarity") and -1 <= self.min_similarity <= 1,
            "min_similarity",
            "a number in [-1, 1]",
        )
        need(self.encoding in FACTOR_ENCODINGS, "encoding", f"one of {FACTOR_ENCODINGS}")


# ---------------------------------------------------------------------------------------------
# Validation


def _array(value: object, arg: str, ndim: int) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{arg}: expected a numeric array, got {type(value).__name__}") from e
    if a.ndim != ndim:
        raise InputError(f"{arg}: expected {ndim} dimension(s), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{arg}: expected finite values")
    return a


def _rows(counts: object, sizes: object) -> tuple[np.ndarray, np.ndarray]:
    R = _array(counts, "counts", 2)
    n = _array(sizes, "sizes", 1)
    if n.shape != (R.shape[0],):
        raise InputError(f"sizes: expected one per counts row ({R.shape[0]}), got {n.shape}")
    return R, n


def _lower_bounds(lower_bounds: object, C: int) -> np.ndarray:
    lb = _array(lower_bounds, "lower_bounds", 1)
    if lb.shape != (C,):
        raise InputError(f"lower_bounds: expected one per counts row ({C}), got {lb.shape}")
    return lb


def _factors(V: object, arg: str = "V") -> np.ndarray:
    a = _array(V, arg, 2)
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"{arg}: expected [offers ≥ 1, f ≥ 1], got shape {a.shape}")
    return a


def _positive(value: float, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{arg}: expected a number > 0, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{arg}: expected a number > 0, got {value!r}")
    return float(value)


def _integer(value: object, arg: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{arg}: expected an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _id_range(id_range: tuple[int, int]) -> range:
    try:
        start, stop = (int(x) for x in id_range)
    except (TypeError, ValueError) as e:
        raise InputError(f"id_range: expected (start, stop) integers, got {id_range!r}") from e
    if not 0 <= start < stop:
        raise InputError(f"id_range: expected 0 ≤ start < stop, got {id_range!r}")
    return range(start, stop)


# ---------------------------------------------------------------------------------------------
# The pieces


def rates(counts: object, sizes: object) -> np.ndarray:
    """``p[c, i] = max(R[c, i], 0) / n_c``; a row whose population is ≤ 0 has rate 0 (noise can
    push an estimate below zero, and such a row carries no usable signal).

    Raises:
        InputError: naming the argument.
    """
    R, n = _rows(counts, sizes)
    safe = np.where(n > 0, n, 1.0)
    out: np.ndarray = np.where((n > 0)[:, None], np.clip(R, 0, None) / safe[:, None], 0.0)
    return out


def centroid_update(
    V: object, counts: object, sizes: object, *, regularization: float
) -> np.ndarray:
    """float64[C, f]: each cohort's fold-in ``(VᵀV + λI)⁻¹ Vᵀ (counts_c / n_c)``: with
    confidence 1, exactly the mean of its members' fold-ins.

    Raises:
        InputError: naming the argument.
    """
    Vf = _factors(V)
    P = rates(counts, sizes)
    if P.shape[1] != Vf.shape[0]:
        raise InputError(f"counts: expected [C, {Vf.shape[0]}] to match V, got {P.shape}")
    G_inv = gram_inverse(Vf, _positive(regularization, "regularization"))
    # einsum, not BLAS: the centroids decide assignments, so their sums keep one order
    out: np.ndarray = np.einsum("ci,if,gf->cg", P, Vf, G_inv, optimize=False)
    return out


def signal_shares(
    counts: object, sizes: object, count_variances: object, V: object
) -> np.ndarray:
    """float64[C] in [0, 1]: for each row, the share of its deviation from the fleet's mean
    profile that is signal rather than noise, *as the factors see it*. A row's deviation per
    offer is ``d_c = R[c] − n_c·r`` (``r`` the rows' pooled rate); the factors see
    ``Vᵀd_c``, whose squared length is, in expectation, the signal's plus the noise's,
    ``Σ_i ν_ci·‖V_i‖²`` with ``ν_ci`` the variance of ``d_c``'s noise at offer ``i`` (from
    ``count_variances``, independent across rows and offers; the pooled rate shares some of
    it), so the share is ``max(0, 1 − that noise / ‖Vᵀd_c‖²)`` (0 for a row with no
    deviation).
    Measured per offer instead, the noise of 1,682 movies buries a signal that lives in a
    few directions, which is the point of a low-rank fit.

    Popularity is what the deviation leaves out on purpose: the ranking has it from the offer
    bias already, and ``V·u`` earns its weight only by what a cohort does differently.

    Raises:
        InputError: naming the argument.
    """
    R, n = _rows(counts, sizes)
    var = _array(count_variances, "count_variances", 2)
    if var.shape != R.shape or np.any(var < 0):
        raise InputError(f"count_variances: expected {R.shape} values ≥ 0, got {var.shape}")
    Vf = _factors(V)
    if Vf.shape[0] != R.shape[1]:
        raise InputError(f"V: expected [{R.shape[1]}, f] like the rows' offers, got {Vf.shape}")
    w = np.clip(n, 0, None)
    total = float(w.sum())
    share = w / total if total > 0 else np.zeros(w.size)  # each row's part of the pooled rate
    dev = np.einsum("ci,if->cf", R - share[:, None] * R.sum(axis=0), Vf, optimize=False)
    square = np.einsum("cf,cf->c", dev, dev, optimize=False)
    # d_c's noise is (1 − s_c)·e_c − s_c·Σ_{o≠c} e_o: variance (1 − 2s_c)·σ²_c + s_c²·Σ_o σ²_o
    per_offer = (1 - 2 * share)[:, None] * var + (share**2)[:, None] * var.sum(axis=0)
    noise = np.einsum("ci,if,if->c", per_offer, Vf, Vf, optimize=False)
    safe = np.where(square > 0, square, 1.0)
    out: np.ndarray = np.where(square > 0, np.clip(1.0 - noise / safe, 0.0, 1.0), 0.0)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("cf,cf->c", x, x))
    out: np.ndarray = x / np.where(norms > 0, norms, 1.0)[:, None]
    return out


def _hashed(n: int, f: int, tag: str) -> np.ndarray:
    """A [n, f] matrix of values in [-1, 1] from SHA-256: the same on every machine and numpy
    version (a generator's stream is not promised to stay the same)."""
    out = np.empty((n, f), dtype=np.float64)
    blocks = (f + 31) // 32
    for r in range(n):
        raw = b"".join(
            hashlib.sha256(f"localrank-cohort/1:{tag}:{r}:{b}".encode()).digest()
            for b in range(blocks)
        )
        out[r] = np.frombuffer(raw, dtype=np.uint8)[:f] / 127.5 - 1.0
    return out


def _membership(offer_categories: Sequence[Sequence[int]], n_categories: int) -> np.ndarray:
    if isinstance(n_categories, bool) or not isinstance(n_categories, int) or n_categories < 1:
        raise InputError(f"n_categories: expected an integer ≥ 1, got {n_categories!r}")
    M = np.zeros((len(offer_categories), n_categories))
    for i, cats in enumerate(offer_categories):
        cs = sorted({int(c) for c in cats})
        if any(not 0 <= c < n_categories for c in cs):
            raise InputError(
                f"offer_categories: offer {i} has categories {cs}, expected each in "
                f"[0, {n_categories})"
            )
        if cs:
            M[i, cs] = 1.0 / len(cs)
    return M


def content_factors(
    offer_categories: Sequence[Sequence[int]],
    n_categories: int,
    factors: int,
    *,
    jitter: float = 0.01,
) -> np.ndarray:
    """float64[offers, factors]: round 0's ``V`` from public content. An offer's row is its
    categories' one-hot mean (categories beyond ``factors`` are projected by hashed ±1
    directions), plus a small hashed jitter in every column: a column that starts at exactly
    zero would stay zero under ALS.

    The caller passes non-sensitive categories only.

    Raises:
        InputError: naming the argument.
    """
    if isinstance(factors, bool) or not isinstance(factors, int) or factors < 1:
        raise InputError(f"factors: expected an integer ≥ 1, got {factors!r}")
    if not len(offer_categories):
        raise InputError("offer_categories: expected at least one offer")
    if not (math.isfinite(jitter) and jitter >= 0):
        raise InputError(f"jitter: expected a number ≥ 0, got {jitter!r}")
    M = _membership(offer_categories, n_categories)
    if n_categories <= factors:
        V = np.zeros((M.shape[0], factors))
        V[:, :n_categories] = M
    else:
        H = np.sign(_hashed(n_categories, factors, "projection")) / math.sqrt(factors)
        V = np.einsum("ik,kf->if", M, H, optimize=False)
    out: np.ndarray = V + jitter * _hashed(M.shape[0], factors, "jitter")
    return out


def content_cohorts(
    V: object,
    offer_categories: Sequence[Sequence[int]],
    n_categories: int,
    *,
    regularization: float,
    pairs: bool = False,
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Round 0's cohorts: one per category with offers (and with ``pairs``, one per pair of
    such categories), each the fold-in of a pseudo-device that engaged equally with every offer
    of its categories. A device whose history is one category folds in along exactly that
    direction, so "nearest centroid" is "top category" (or top two).

    Returns:
        (float64[C, f] centroids, the category tuple of each).

    Raises:
        InputError: naming the argument.
    """
    Vf = _factors(V)
    if len(offer_categories) != Vf.shape[0]:
        raise InputError(
            f"offer_categories: expected one per V row ({Vf.shape[0]}), got {len(offer_categories)}"
        )
    M = _membership(offer_categories, n_categories) > 0
    present = [k for k in range(n_categories) if M[:, k].any()]
    groups: list[tuple[int, ...]] = [(k,) for k in present]
    if pairs:
        groups += [(a, b) for ai, a in enumerate(present) for b in present[ai + 1 :]]
    rows = np.zeros((len(groups), Vf.shape[0]))
    for g, cats in enumerate(groups):
        for k in cats:
            rows[g] += M[:, k] / M[:, k].sum()
        rows[g] /= len(cats)
    centroids = (
        centroid_update(Vf, rows, np.ones(len(groups)), regularization=regularization)
        if groups
        else np.zeros((0, Vf.shape[1]))
    )
    return centroids, groups


@dataclass(frozen=True)
class AlsFit:
    """The result of :func:`fit_offer_factors`."""

    V: np.ndarray  # float64[offers, f]
    U: np.ndarray  # float64[C, f]: the cohorts' own factors (never published)
    objective: tuple[float, ...]  # J after each iteration


def als_objective(
    counts: object,
    sizes: object,
    U: object,
    V: object,
    *,
    alpha: float,
    regularization: float,
    offer_regularization: float,
    anchor: object | None = None,
    row_weights: object | None = None,
) -> float:
    """``J(U, V)`` of the module docstring; with ``anchor`` (float ``[offers, f]``) the offers'
    term is ``λ_V·‖V − anchor‖²``; with ``row_weights`` each row weighs by its own, not by its
    size.

    Raises:
        InputError: naming the argument.
    """
    R, n = _rows(counts, sizes)
    P = rates(R, n)
    Uf = _array(U, "U", 2)
    Vf = _factors(V)
    w = np.clip(n if row_weights is None else _array(row_weights, "row_weights", 1), 0, None)
    S = np.einsum("cf,if->ci", Uf, Vf, optimize=False)
    conf = 1.0 + alpha * P
    data = float(np.einsum("c,ci->", w, conf * (P - S) ** 2))
    reg = regularization * float(np.einsum("c,cf,cf->", w, Uf, Uf))
    D = Vf if anchor is None else Vf - _factors(anchor, "anchor")
    return data + reg + offer_regularization * float(np.einsum("if,if->", D, D))


def _outer_rows(X: np.ndarray) -> np.ndarray:
    """[n, f·f]: each row's outer product, flattened, so a weighted sum of outer products is one
    two-operand einsum."""
    out: np.ndarray = (X[:, :, None] * X[:, None, :]).reshape(X.shape[0], -1)
    return out


# The ALS's sums run in np.einsum, not BLAS: OpenBLAS splits a product's summed dimension
# across threads when it is long (the offers), which changed the fit's bits between 1 and 2
# threads on this machine. einsum's loops keep one order; at 2,000 offers, 40 cohorts and
# f = 32 an iteration takes about 0.2 s.


def _shared_solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[m, f]: ``A⁻¹ b_k`` for every row ``b_k``, with one f × f matrix ``A`` shared by all
    (one small inverse, then an einsum: without confidence weights every cohort's, and every
    offer's, normal matrix is the same, and m batched solves of it were most of a round)."""
    A_inv = np.linalg.inv(A)
    out: np.ndarray = np.einsum("fg,kg->kf", (A_inv + A_inv.T) / 2, b, optimize=False)
    return out


def _solve_cohorts(P: np.ndarray, V: np.ndarray, alpha: float, lam: float) -> np.ndarray:
    f = V.shape[1]
    base = np.einsum("if,ig->fg", V, V, optimize=False) + lam * np.eye(f)
    b = np.einsum("ci,if->cf", (1.0 + alpha * P) * P, V, optimize=False)
    if alpha == 0:
        return _shared_solve(base, b)
    A = np.broadcast_to(base, (P.shape[0], f, f)).copy()
    A += alpha * np.einsum("ci,ij->cj", P, _outer_rows(V), optimize=False).reshape(-1, f, f)
    out: np.ndarray = np.linalg.solve(A, b[:, :, None])[:, :, 0]
    return out


def _solve_offers(
    P: np.ndarray, W: np.ndarray, U: np.ndarray, lam_v: float, anchor: np.ndarray | None = None
) -> np.ndarray:
    f = U.shape[1]
    b = np.einsum("ci,cf->if", W * P, U, optimize=False)
    if anchor is not None:
        b = b + lam_v * anchor
    if W.shape[1] and np.all(W[:, :1] == W):
        # every offer weighs the cohorts alike (no confidence term): one shared matrix
        A0 = np.einsum("c,cf,cg->fg", W[:, 0], U, U, optimize=False) + lam_v * np.eye(f)
        return _shared_solve(A0, b)
    A = np.einsum("ci,cj->ij", W, _outer_rows(U), optimize=False).reshape(-1, f, f)
    A += lam_v * np.eye(f)
    out: np.ndarray = np.linalg.solve(A, b[:, :, None])[:, :, 0]
    return out


def fit_offer_factors(
    counts: object,
    sizes: object,
    initial: object,
    *,
    settings: CohortSettings | None = None,
    row_weights: object | None = None,
) -> AlsFit:
    """Weighted implicit ALS on the cohort × offer rows (module docstring), warm-started from
    ``initial`` (float ``[offers, f]``: the previous bundle's ``V``, or round 0's content
    factors). Each iteration solves the cohorts' factors, then the offers'.

    Raises:
        InputError: naming the argument.
    """
    s = settings or CohortSettings()
    R, n = _rows(counts, sizes)
    V = _factors(initial, "initial").copy()
    if R.shape[1] != V.shape[0]:
        raise InputError(f"counts: expected [C, {V.shape[0]}] to match initial, got {R.shape}")
    P = rates(R, n)
    weights = n
    if row_weights is not None:
        weights = _array(row_weights, "row_weights", 1)
        if weights.shape != n.shape:
            raise InputError(f"row_weights: expected one per row ({n.size}), got {weights.shape}")
    W = np.clip(weights, 0, None)[:, None] * (1.0 + s.alpha * P)
    anchor = V.copy() if s.anchor else None
    trace: list[float] = []
    U = np.zeros((R.shape[0], V.shape[1]))
    for _ in range(s.iterations):
        U = _solve_cohorts(P, V, s.alpha, s.regularization)
        V = _solve_offers(P, W, U, s.offer_regularization, anchor)
        trace.append(
            als_objective(
                R,
                n,
                U,
                V,
                alpha=s.alpha,
                regularization=s.regularization,
                offer_regularization=s.offer_regularization,
                anchor=anchor,
                row_weights=weights,
            )
        )
    return AlsFit(V, U, tuple(trace))


def merge_small(
    centroids: object,
    sizes: object,
    variances: object,
    *,
    min_population: int,
    z: float = Z95,
    margin: float = 0.0,
) -> list[tuple[int, ...]]:
    """Groups of row indices such that every group's population lower bound,
    ``Σ sizes − z·√(Σ variances) − margin``, is ≥ ``min_population``. Repeatedly, the group
    with the smallest lower bound below it (ties: lowest index) joins the group whose centroid
    is nearest in direction (ties: lowest index). A group's centroid is the size-weighted mean
    of its rows' centroids, which is the fold-in of the summed row.

    The bound of a sum is computed from the summed variances, not by adding the rows' lower
    bounds: that would subtract ``z·sd`` once per row, and with 190 rows under GRR at ε = 2 no
    merge could ever clear the threshold. Census estimates of different values are negatively
    correlated (each report counts once), so the summed variance over-states the sum's
    variance: the bound stays conservative. ``margin`` is what forged reports may add
    (``docs/privacy-math.md``). When all rows together fall short there is no group (every
    device stays at the root).

    Raises:
        InputError: naming the argument.
    """
    Cf = _array(centroids, "centroids", 2)
    n = _array(sizes, "sizes", 1)
    if n.shape != (Cf.shape[0],):
        raise InputError(f"sizes: expected one per centroid ({Cf.shape[0]}), got {n.shape}")
    var = _array(variances, "variances", 1)
    if var.shape != n.shape or np.any(var < 0):
        raise InputError(f"variances: expected {n.size} values ≥ 0, got shape {var.shape}")
    _integer(min_population, "min_population", 1)
    if not (math.isfinite(z) and z >= 0):
        raise InputError(f"z: expected a number ≥ 0, got {z!r}")
    if not (math.isfinite(margin) and margin >= 0):
        raise InputError(f"margin: expected a number ≥ 0, got {margin!r}")

    def lower(est: np.ndarray, v: np.ndarray) -> np.ndarray:
        out: np.ndarray = est - z * np.sqrt(v) - margin
        return out

    if Cf.shape[0] == 0 or lower(n.sum(keepdims=True), var.sum(keepdims=True))[0] < min_population:
        return []
    groups: list[list[int]] = [[c] for c in range(Cf.shape[0])]
    w = np.clip(n, 0, None)
    mass = w[:, None] * Cf  # Σ n_c·centroid_c per group
    weight = w.copy()
    est = n.copy()
    v = var.copy()
    alive = np.ones(Cf.shape[0], dtype=bool)
    while True:
        idx = np.flatnonzero(alive)
        low = lower(est[idx], v[idx])
        if idx.size == 1 or low.min() >= min_population:
            break
        g = int(idx[np.argmin(low)])  # argmin: the first of equal minima
        others = idx[idx != g]
        cents = mass[others] / np.where(weight[others] > 0, weight[others], 1.0)[:, None]
        mine = mass[g] / (weight[g] if weight[g] > 0 else 1.0)
        norm_g = float(np.sqrt(mine @ mine))
        sims = (
            np.einsum("cf,f->c", _unit(cents), mine / norm_g, optimize=False)
            if norm_g > 0
            else np.zeros(others.size)
        )
        h = int(others[np.argmax(sims)])
        groups[h] += groups[g]
        mass[h] += mass[g]
        weight[h] += weight[g]
        est[h] += est[g]
        v[h] += v[g]
        alive[g] = False
    return sorted(tuple(sorted(groups[g])) for g in np.flatnonzero(alive))


def group_lower_bounds(
    groups: Sequence[Sequence[int]],
    sizes: np.ndarray,
    variances: np.ndarray,
    *,
    z: float = Z95,
    margin: float = 0.0,
) -> np.ndarray:
    """float64[G]: each group's population lower bound, ``Σ sizes − z·√(Σ variances) − margin``,
    the bound :func:`merge_small` merges by (the module docstring)."""
    out = [
        float(sizes[list(g)].sum()) - z * math.sqrt(float(variances[list(g)].sum())) - margin
        for g in groups
    ]
    return np.asarray(out, dtype=np.float64)


def target_cohorts(n_devices: float, min_population: int, per_cohort: float = 1.5) -> int:
    """``max(1, ⌊n_devices / (per_cohort · min_population)⌋)``: the number of cohorts to aim at.

    Raises:
        InputError: naming the argument.
    """
    if not (isinstance(n_devices, (int, float)) and math.isfinite(n_devices) and n_devices >= 0):
        raise InputError(f"n_devices: expected a number ≥ 0, got {n_devices!r}")
    return max(1, int(n_devices // (per_cohort * min_population)))


def split_largest(
    centroids: object,
    P: object,
    lower_bounds: object,
    V: object,
    *,
    regularization: float,
    target: int,
    min_population: int,
    split_at: float = 2.5,
    step: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Split the largest cohorts (by lower bound) while there are fewer than ``target`` and the
    largest unsplit one holds at least ``split_at · min_population``. A parent ``c`` becomes
    ``c ± step·‖c‖·d``, where ``d`` is the main axis (top eigenvector) of the spread of its
    engaged offers' fold-ins ``(VᵀV + λI)⁻¹ V_i`` (weighted by its rates ``P[c]``),
    orthogonal to ``c``: the axis along which its taste varies most. With equal norms, "nearest
    in direction" splits the parent's members by the side of ``d`` they lie on.

    Returns:
        (float64[C′, f] centroids, int64[C′] the parent row of each; a child of a split has a
        parent that appears twice).

    Raises:
        InputError: naming the argument.
    """
    Cf = _array(centroids, "centroids", 2)
    Pf = _array(P, "P", 2)
    Vf = _factors(V)
    lb = _lower_bounds(lower_bounds, Cf.shape[0])
    if Pf.shape != (Cf.shape[0], Vf.shape[0]):
        raise InputError(f"P: expected ({Cf.shape[0]}, {Vf.shape[0]}), got {Pf.shape}")
    if Cf.shape[1] != Vf.shape[1]:
        raise InputError(f"centroids: expected [C, {Vf.shape[1]}] like V, got {Cf.shape}")
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise InputError(f"target: expected an integer ≥ 0, got {target!r}")
    G_inv = gram_inverse(Vf, _positive(regularization, "regularization"))
    # row i: the fold-in of offer i alone (G_inv is symmetric)
    item_fold = np.einsum("if,fg->ig", Vf, G_inv, optimize=False)
    out = [Cf[c] for c in range(Cf.shape[0])]
    parent = list(range(Cf.shape[0]))
    split = np.zeros(Cf.shape[0], dtype=bool)
    while len(out) < target:
        order = [c for c in np.argsort(-lb, kind="stable") if not split[c]]
        if not order or lb[order[0]] < split_at * min_population:
            break
        c = int(order[0])
        split[c] = True
        d = _split_axis(Cf[c], Pf[c], item_fold)
        if d is None:
            continue
        offset = step * float(np.sqrt(Cf[c] @ Cf[c])) * d
        at = parent.index(c)
        out[at] = Cf[c] + offset
        out.insert(at + 1, Cf[c] - offset)
        parent.insert(at + 1, c)
    return np.array(out).reshape(-1, Cf.shape[1]), np.array(parent, dtype=np.int64)


def _split_axis(c: np.ndarray, p: np.ndarray, item_fold: np.ndarray) -> np.ndarray | None:
    total = p.sum()
    norm = float(np.sqrt(c @ c))
    if total <= 0 or norm == 0:
        return None
    mean = np.einsum("i,if->f", p, item_fold, optimize=False) / total
    X = item_fold - mean
    cov = np.einsum("i,if,ig->fg", p / total, X, X, optimize=False)
    proj = np.eye(c.size) - np.outer(c, c) / norm**2
    cov = proj @ cov @ proj
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    if values[-1] <= 0:
        return None
    d = vectors[:, -1]
    k = int(np.argmax(np.abs(d)))
    return d if d[k] > 0 else -d  # a fixed sign: the same split every run


def match_ids(
    previous_tastes: object,
    previous_ids: object,
    tastes: object,
    *,
    id_range: tuple[int, int],
    min_similarity: float = 0.5,
) -> np.ndarray:
    """int64[C]: an id for each new cohort. Greedy on the cosine of tastes (columns: cohorts,
    rows: their predicted rates per offer, ``V·centroid``): the most similar (new, previous)
    pair takes the previous id, then the next most similar among the rest, and so on (ties:
    lowest new index, then lowest previous index); a pair below ``min_similarity`` never
    matches. A cohort left over takes the lowest id in ``id_range`` that the previous round did
    not use, so an id does not change meaning from one round to the next, or failing that the
    lowest id not yet taken.

    Raises:
        InputError: naming the argument, also when ``id_range`` is too small.
    """
    ids_range = _id_range(id_range)
    T = _array(tastes, "tastes", 2)
    prev_ids = np.asarray(previous_ids, dtype=np.int64).reshape(-1)
    Tp = (
        _array(previous_tastes, "previous_tastes", 2)
        if prev_ids.size
        else np.zeros((T.shape[0], 0))
    )
    if Tp.shape != (T.shape[0], prev_ids.size):
        raise InputError(
            f"previous_tastes: expected ({T.shape[0]}, {prev_ids.size}) [offers, previous "
            f"cohorts], got {Tp.shape}"
        )
    if T.shape[1] > len(ids_range):
        raise InputError(f"id_range: {len(ids_range)} ids cannot name {T.shape[1]} cohorts")
    # [new, previous]; the sum runs over offers, so einsum (module docstring)
    S = np.einsum("ai,bi->ab", _unit(T.T), _unit(Tp.T), optimize=False)
    new_ids = np.full(T.shape[1], -1, dtype=np.int64)
    if S.size:
        flat = np.lexsort((np.tile(np.arange(S.shape[1]), S.shape[0]),
                           np.repeat(np.arange(S.shape[0]), S.shape[1]),
                           -S.reshape(-1)))  # fmt: skip
        taken_prev = np.zeros(S.shape[1], dtype=bool)
        for k in flat:
            a, b = divmod(int(k), S.shape[1])
            if S[a, b] < min_similarity:
                break
            if new_ids[a] < 0 and not taken_prev[b] and int(prev_ids[b]) in ids_range:
                new_ids[a] = prev_ids[b]
                taken_prev[b] = True
    old = set(prev_ids.tolist())
    for a in np.flatnonzero(new_ids < 0):
        new_ids[a] = _fresh_id(ids_range, set(new_ids.tolist()), old)
    return new_ids


def _fresh_id(ids_range: range, taken: set[int], old: set[int]) -> int:
    """The lowest id in ``ids_range`` not ``taken`` that the previous round did not use (so no
    device's memo for it means another taste), or failing that the lowest not taken."""
    choice = next((i for i in ids_range if i not in taken and i not in old), None)
    return choice if choice is not None else next(i for i in ids_range if i not in taken)


# ---------------------------------------------------------------------------------------------
# Rounds


@dataclass(frozen=True)
class CohortModel:
    """One round's published cohorts: the bundle's payload, and what the segment table needs."""

    payload: CohortPayload
    #: float64[C]: the lower bound of each cohort's population (a split child: half its
    #: parent's, an estimate no census has measured yet).
    populations: np.ndarray
    #: bool[C]: split this round, so not yet measured by a census.
    provisional: np.ndarray
    #: The published groups of learning cohorts (``fine_cohorts``), as ids, the one that is
    #: published first: its population is the group's and its statistics pool the group's
    #: rows. Empty: every cohort stands for itself.
    groups: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class CohortRound:
    """What :func:`cohort_round` did, for the logs and the evaluation."""

    model: CohortModel
    merged: list[tuple[int, ...]]  # previous ids merged into one row
    split: list[int]  # ids of the previous round whose row was split
    objective: tuple[float, ...]


def initial_model(
    offer_categories: Sequence[Sequence[int]],
    n_categories: int,
    *,
    id_range: tuple[int, int],
    settings: CohortSettings | None = None,
    pairs: bool = False,
) -> tuple[CohortModel, list[tuple[int, ...]]]:
    """Round 0: content factors and one cohort per category (and pair, with ``pairs``), with
    ids from the start of ``id_range`` and unknown (zero) populations.

    Returns:
        (the model, the category tuple of each cohort, in id order).

    Raises:
        InputError: naming the argument.
    """
    s = settings or CohortSettings()
    ids_range = _id_range(id_range)
    encoded = encode_factors(content_factors(offer_categories, n_categories, s.factors), s.encoding)
    V_hat = decode_factors(encoded).astype(np.float64)
    centroids, groups = content_cohorts(
        V_hat, offer_categories, n_categories, regularization=s.regularization, pairs=pairs
    )
    if len(groups) > len(ids_range):
        raise InputError(f"id_range: {len(ids_range)} ids cannot name {len(groups)} cohorts")
    ids = np.arange(ids_range.start, ids_range.start + len(groups), dtype=np.int64)
    payload = CohortPayload.build(encoded, centroids, ids, regularization=s.regularization)
    C = len(groups)
    return CohortModel(payload, np.zeros(C), np.zeros(C, dtype=bool)), groups


def cohort_round(
    previous: CohortPayload,
    counts: object,
    sizes: object,
    variances: object,
    *,
    n_devices: float,
    id_range: tuple[int, int],
    settings: CohortSettings | None = None,
    margin: float = 0.0,
    earlier_counts: object | None = None,
    earlier_sizes: object | None = None,
    count_variances: object | None = None,
) -> CohortRound:
    """One round: the previous bundle's payload plus this round's rows (in ``previous.ids``
    order) give the next payload.

    Args:
        previous: the payload the devices used when they reported these rows.
        counts: float ``[C, offers]``, each cohort's de-biased engagement per offer.
        sizes: float ``[C]``, each cohort's estimated population (rates divide by it).
        variances: float ``[C]``, each estimate's variance: a population's lower bound is
            ``size − 1.96·√variance − margin``, as for every segment (:func:`merge_small`).
        n_devices: the fleet's estimated size (the census' total).
        margin: what forged census reports may add to a population.
        earlier_counts: float ``[E, offers]``, optional: rows of earlier rounds' cohorts that
            are still in the aggregation window. Each was published with ≥ min_population; a
            different partition of the same fleet shows more co-engagement, so they join the
            ALS fit as further pseudo-users (not the centroids, merging or ids).
        earlier_sizes: float ``[E]``, their populations.
        count_variances: float ``[C, offers]``, optional: the noise variance of each count
            (de-biasing, server noise). With them the payload's ``fold_in_weight`` is the
            rows' :func:`signal_shares`, weighted by size, and (``fine_cohorts``) each row
            weighs into the fit by its size times its share; without, both are 1.

    Raises:
        InputError: naming the argument.
    """
    s = settings or CohortSettings()
    ids_range = _id_range(id_range)
    R, n = _rows(counts, sizes)
    var = _array(variances, "variances", 1)
    if var.shape != (R.shape[0],):
        raise InputError(f"variances: expected one per counts row ({R.shape[0]}), got {var.shape}")
    V_prev = previous.factors.astype(np.float64)
    if R.shape != (previous.ids.size, V_prev.shape[0]):
        raise InputError(
            f"counts: expected ({previous.ids.size}, {V_prev.shape[0]}) [previous cohorts, "
            f"offers], got {R.shape}"
        )
    if V_prev.shape[1] != s.factors:
        raise InputError(
            f"settings: factors = {s.factors}, but the previous payload has {V_prev.shape[1]}"
        )
    noise = None
    if count_variances is not None:
        noise = _array(count_variances, "count_variances", 2)
        if noise.shape != R.shape or np.any(noise < 0):
            raise InputError(f"count_variances: expected {R.shape} values ≥ 0, got {noise.shape}")
    if s.fine_cohorts:
        return _fine_round(previous, R, n, var, n_devices, ids_range, s, margin, noise)
    row_centroids = centroid_update(V_prev, R, n, regularization=s.regularization)
    groups = merge_small(row_centroids, n, var, min_population=s.min_population, margin=margin)
    merged_ids = [tuple(int(previous.ids[g]) for g in grp) for grp in groups if len(grp) > 1]
    Rm = np.array([R[list(g)].sum(axis=0) for g in groups]).reshape(-1, R.shape[1])
    nm = np.array([n[list(g)].sum() for g in groups])
    lbm = group_lower_bounds(groups, n, var, margin=margin)
    if not groups:  # too few devices for one cohort: keep V, publish none
        payload = CohortPayload.build(
            dict(previous.encoded), np.zeros((0, s.factors)), np.zeros(0, np.int64),
            regularization=s.regularization,
        )  # fmt: skip
        return CohortRound(CohortModel(payload, np.zeros(0), np.zeros(0, bool)), [], [], ())
    R_fit, n_fit = (R, n) if s.fit_unmerged else (Rm, nm)
    if earlier_counts is not None or earlier_sizes is not None:
        Re, ne = _rows(earlier_counts, earlier_sizes)
        if Re.shape[1] != R.shape[1]:
            raise InputError(f"earlier_counts: expected [E, {R.shape[1]}], got {Re.shape}")
        R_fit, n_fit = np.vstack([Rm, Re]), np.concatenate([nm, ne])
    fit = fit_offer_factors(R_fit, n_fit, V_prev, settings=s)
    encoded = encode_factors(fit.V, s.encoding)
    weight = 1.0
    if noise is not None:
        noise_m = np.array([noise[list(g)].sum(axis=0) for g in groups])
        weight = _weighted_share(signal_shares(Rm, nm, noise_m, V_prev), nm)
    V_hat = decode_factors(encoded).astype(np.float64)
    centroids = centroid_update(V_hat, Rm, nm, regularization=s.regularization)
    # never more cohorts than the reserved ids can name
    target = min(target_cohorts(n_devices, s.min_population, s.per_cohort), len(ids_range))
    centroids, parent = split_largest(
        centroids,
        rates(Rm, nm),
        lbm,
        V_hat,
        regularization=s.regularization,
        target=target,
        min_population=s.min_population,
        split_at=s.split_at,
        step=s.split_step,
    )
    counts_of_parent = np.bincount(parent, minlength=len(groups))
    provisional = counts_of_parent[parent] > 1
    populations = np.where(provisional, lbm[parent] / 2, lbm[parent])
    split_ids = sorted({int(previous.ids[groups[p][0]]) for p in parent[provisional].tolist()})
    # The previous cohorts' tastes, measured with this round's factors: the fold-ins of the
    # rows their members reported. Both sides then live in one basis, so "nearest" means the
    # same taste even when V changed completely (round 0's content factors to learned ones).
    previous_centroids = centroid_update(V_hat, R, n, regularization=s.regularization)
    ids = match_ids(
        np.einsum("if,cf->ic", V_hat, previous_centroids),
        previous.ids,
        np.einsum("if,cf->ic", V_hat, centroids),
        id_range=(ids_range.start, ids_range.stop),
        min_similarity=s.min_similarity,
    )
    order = np.argsort(ids, kind="stable")
    payload = CohortPayload.build(
        encoded, centroids[order], ids[order], regularization=s.regularization,
        fold_in_weight=weight,
    )  # fmt: skip
    model = CohortModel(payload, populations[order], provisional[order])
    return CohortRound(model, merged_ids, split_ids, fit.objective)


def _weighted_share(shares: np.ndarray, sizes: np.ndarray) -> float:
    """The rows' signal shares averaged by size (1 when no row has a size)."""
    w = np.clip(sizes, 0, None)
    return float(np.clip((shares * w).sum() / w.sum(), 0.0, 1.0)) if w.sum() > 0 else 1.0


def _fine_round(
    previous: CohortPayload,
    R: np.ndarray,
    n: np.ndarray,
    var: np.ndarray,
    n_devices: float,
    ids_range: range,
    s: CohortSettings,
    margin: float,
    noise: np.ndarray | None = None,
) -> CohortRound:
    """:func:`cohort_round` with ``fine_cohorts``: the learning cohorts persist and only the
    publication merges.

    - **Sizes for learning** come from each row's engagement mass, in devices (the fleet's
      mass per device from the census' total), not from the per-cohort census: a cohort's
      direction does not depend on its size, and at ε = 2 a cohort's census estimate has a
      standard deviation of about 40 devices at 943 devices, which would scale some rows to
      noise and zero others for good.
    - A learning cohort lives while that size is ≥ ``fine_floor · min_population`` (of the
      mean cohort's size, while that is smaller); its members join the nearest live one
      otherwise. The largest split while there are fewer than the
      reserved ids and the largest's census lower bound is ≥ ``split_at · min_population``
      (as in :func:`cohort_round`: a split's children must both be publishable).
    - **Publication** is :func:`merge_small` on the census, as for every segment: each group
      of live, unsplit cohorts whose population lower bound clears ``min_population`` is
      published once, under the id of its largest member (by census), with the group's bound;
      the other members and split children are in the bundle unpublished. Devices rank by the
      nearest published centroid.
    """
    mass = np.clip(R, 0, None).sum(axis=1)
    total = float(mass.sum())
    per_device = total / max(n_devices, 1.0) if total > 0 else 1.0
    proxy = mass / per_device
    # relative to the mean cohort while the fleet is smaller than one min_population per
    # cohort: an early round must not end the cohorts a grown fleet would fill
    floor = s.fine_floor * min(float(s.min_population), max(n_devices, 1.0) / R.shape[0])
    alive = (proxy >= floor) & (proxy > 0)
    if not alive.any():
        alive = proxy == proxy.max()
    live = np.flatnonzero(alive)
    Ra, na = R[live], proxy[live]
    V_prev = previous.factors.astype(np.float64)
    weight, fit_sizes = 1.0, na
    if noise is not None:
        shares = signal_shares(Ra, na, noise[live], V_prev)
        weight = _weighted_share(shares, na)
        # a row weighs by the devices' signal it carries: noise alone leaves V at its anchor
        fit_sizes = na * shares
    fit = fit_offer_factors(Ra, na, V_prev, settings=s, row_weights=fit_sizes)
    encoded = encode_factors(fit.V, s.encoding)
    V_hat = decode_factors(encoded).astype(np.float64)
    centroids = centroid_update(V_hat, Ra, na, regularization=s.regularization)
    centroids, parent = split_largest(
        centroids,
        rates(Ra, na),
        group_lower_bounds([(int(r),) for r in live], n, var, margin=margin),
        V_hat,
        regularization=s.regularization,
        target=len(ids_range),
        min_population=s.min_population,
        split_at=s.split_at,
        step=s.split_step,
    )
    split = np.bincount(parent, minlength=live.size) > 1
    # ids: a live cohort keeps its own; a split's second child takes an id the previous round
    # did not use (so no device's memo for it means another taste), else any free one
    ids = np.empty(parent.size, dtype=np.int64)
    taken = {int(previous.ids[live[p]]) for p in range(live.size)}
    old = set(previous.ids.tolist())
    seen: set[int] = set()
    for j, p in enumerate(parent.tolist()):
        if p not in seen:
            ids[j] = int(previous.ids[live[p]])
            seen.add(p)
            continue
        ids[j] = _fresh_id(ids_range, taken, old)
        taken.add(int(ids[j]))
    provisional = split[parent]
    # publication: census-measured groups of the live, unsplit cohorts
    whole = np.flatnonzero(~split)
    rows = live[whole]
    publish = merge_small(
        centroid_update(V_hat, R[rows], np.maximum(n[rows], 1.0), regularization=s.regularization),
        n[rows],
        var[rows],
        min_population=s.min_population,
        margin=margin,
    )
    lower = group_lower_bounds(publish, n[rows], var[rows], margin=margin)
    populations = np.full(parent.size, -np.inf)
    position = {int(p): j for j, p in enumerate(parent.tolist()) if not split[p]}
    groups = []
    merged = []
    for grp, bound in zip(publish, lower.tolist(), strict=True):
        members = sorted(grp, key=lambda g: (-n[rows[g]], g))
        at = [position[int(whole[g])] for g in members]
        populations[at[0]] = bound
        groups.append(tuple(int(ids[a]) for a in at))
        if len(at) > 1:
            merged.append(tuple(sorted(int(ids[a]) for a in at)))
    order = np.argsort(ids, kind="stable")
    payload = CohortPayload.build(
        encoded, centroids[order], ids[order], regularization=s.regularization,
        fold_in_weight=weight,
    )  # fmt: skip
    model = CohortModel(payload, populations[order], provisional[order], tuple(sorted(groups)))
    split_ids = sorted({int(previous.ids[live[p]]) for p in np.flatnonzero(split).tolist()})
    return CohortRound(model, merged, split_ids, fit.objective)


def fit_provenance() -> dict[str, str]:
    """The method and the libraries that computed a fit, for the bundle to record."""
    blas = "unknown"
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{deps.get('name', '?')} {deps.get('version', '?')}"
    except (KeyError, TypeError, AttributeError, ValueError):
        pass
    return {
        "method": COHORT_FIT_METHOD,
        "numpy": np.__version__,
        "blas": blas,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
