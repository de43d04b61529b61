"""The slow numpy reference for the scoring kernel, and docs/design.md's notion of "the same".

The reference evaluates the score exactly as the scalar Rust path does: f32 arithmetic, the dot
product accumulated one dimension at a time (vectorised across rows, sequential across d), then
``((w_dot·dot + bias) + w_prior·prior[category]) + adjust``. The scalar path must therefore
match it bit for bit; SIMD paths reassociate the dot product and must match "the same".
"""

from __future__ import annotations

import numpy as np

__all__ = ["assert_same", "reference_scores", "reference_topk", "tolerance"]


def reference_scores(
    u: np.ndarray,
    E: np.ndarray,
    bias: np.ndarray,
    category: np.ndarray,
    prior: np.ndarray,
    eligible: np.ndarray,
    *,
    w_dot: float = 1.0,
    w_prior: float = 1.0,
    adjust: np.ndarray | None = None,
) -> np.ndarray:
    """f32 scores for every row; ``-inf`` where not eligible. Ineligible rows are never read."""
    f32 = np.float32
    n, d = E.shape
    scores = np.full(n, -np.inf, dtype=f32)
    rows = np.flatnonzero(eligible)
    if rows.size == 0:
        return scores
    Ee = E[rows].astype(f32)
    acc = np.zeros(rows.size, dtype=f32)
    for j in range(d):
        acc = (acc + (f32(u[j]) * Ee[:, j]).astype(f32)).astype(f32)
    s = (f32(w_dot) * acc).astype(f32)
    s = (s + bias[rows].astype(f32)).astype(f32)
    s = (s + (f32(w_prior) * prior.astype(f32)[category[rows]]).astype(f32)).astype(f32)
    if adjust is not None:
        s = (s + adjust[rows].astype(f32)).astype(f32)
    scores[rows] = s
    return scores


def reference_topk(scores: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """Indices of the top ``k`` eligible rows: score descending, ties to the lower index."""
    rows = np.flatnonzero(eligible)
    order = np.lexsort((rows, -scores[rows].astype(np.float64)))
    return rows[order][:k].astype(np.int64)


def tolerance(s: np.ndarray | float) -> np.ndarray:
    """docs/design.md: scores closer than ``1e-5·max(1, |s|)`` may swap."""
    return 1e-5 * np.maximum(1.0, np.abs(s))


def assert_same(
    got_idx: np.ndarray, ref_scores: np.ndarray, eligible: np.ndarray, k: int
) -> None:
    """Assert that ``got_idx`` is "the same" top-k as the reference, per docs/design.md.

    Same indices in the same order, except that two rows whose reference scores differ by less
    than ``1e-5·max(1, |s|)`` may swap.
    """
    want = reference_topk(ref_scores, eligible, k)
    assert got_idx.dtype == np.int64
    assert got_idx.shape == want.shape, f"got {got_idx.size} rows, want {want.size}"
    assert len(set(got_idx.tolist())) == got_idx.size, "duplicate indices"
    assert np.all(eligible[got_idx]), "an ineligible row was returned"
    for j, (g, w) in enumerate(zip(got_idx.tolist(), want.tolist(), strict=True)):
        if g == w:
            continue
        sg, sw = float(ref_scores[g]), float(ref_scores[w])
        tol = float(tolerance(max(abs(sg), abs(sw))))
        assert abs(sg - sw) < tol, (
            f"position {j}: got row {g} (score {sg!r}), want row {w} (score {sw!r}); "
            f"they differ by {abs(sg - sw):.3g} ≥ {tol:.3g}"
        )
