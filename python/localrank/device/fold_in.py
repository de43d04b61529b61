"""The on-device fold-in: the device's own factor vector ``u`` and its nearest cohort.

``u = (VᵀV + λI)⁻¹ Σ_i w_i V_i`` is the implicit-ALS user solve with confidence 1: the ridge
regression of the device's weighted engagement vector (``w_i`` on its own offers, 0 elsewhere)
on the offer factors ``V``. The bundle carries ``(VᵀV + λI)⁻¹`` (f × f), so the phone runs no
solver: one weighted sum of its own rows and one f × f product. ``u`` never leaves the device.

What the caller decides, not this module:

- **Sensitive categories never enter.** The caller drops every offer in a sensitive category
  (and every event the cool-down or evidence rules exclude) before calling :func:`fold_in`.
- **Two fold-ins, for two purposes.** The ``u`` that picks the cohort, whose id leaves the
  device, is folded from the signals the policy's ``segments`` row allows. The ``u`` that
  ranks in an app is folded from the signals that app's context allows. Same function, two
  different sets of rows and weights.
- The weights: recency × event strength, ≥ 0.

The cohort is the nearest centroid *in direction*: both ``u`` and the centroids are normalised
(cosine), so a device with a long history and one with a short history of the same taste land
in the same cohort. The server's centroid of a cohort is the fold-in of its aggregate row, which
(with confidence 1) is exactly the mean of its members' fold-ins: k-means, one step per round,
without the server seeing any member.
"""

from __future__ import annotations

import numpy as np

from localrank.errors import InputError

__all__ = ["fold_in", "fold_in_sum", "nearest_cohort"]


def _matrix(value: object, arg: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{arg}: expected a numeric 2-D array, got {type(value).__name__}") from e
    if a.ndim != 2:
        raise InputError(f"{arg}: expected a 2-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{arg}: expected finite values")
    return a


def _empty_vector(value: object) -> bool:
    """``[]``: no rows, written as an empty list."""
    return isinstance(value, (list, tuple)) and len(value) == 0


def fold_in(V_rows: object, weights: object, gram_inv: object) -> np.ndarray:
    """float64[f]: ``u = gram_inv · Σ_i weights[i] · V_rows[i]``.

    Args:
        V_rows: float ``[m, f]``, the factor rows of the device's own offers (``m`` may be 0:
            a device with no usable history folds in to the zero vector).
        weights: float ``[m]``, each ≥ 0 (recency × event strength).
        gram_inv: float ``[f, f]``, the bundle's ``(VᵀV + λI)⁻¹``.

    Raises:
        InputError: naming the argument and what was expected.
    """
    G = _matrix(gram_inv, "gram_inv")
    f = G.shape[0]
    if G.shape != (f, f) or f < 1:
        raise InputError(f"gram_inv: expected a square [f, f] array, got shape {G.shape}")
    V = _matrix(np.zeros((0, f)) if _empty_vector(V_rows) else V_rows, "V_rows")
    if V.shape[1] != f:
        raise InputError(f"V_rows: expected [m, {f}] to match gram_inv, got shape {V.shape}")
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"weights: expected numbers, got {type(weights).__name__}") from e
    if w.shape != (V.shape[0],):
        raise InputError(f"weights: expected shape ({V.shape[0]},) like V_rows, got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("weights: expected finite values ≥ 0")
    return fold_in_sum(w @ V, G)


def fold_in_sum(weighted_sum: np.ndarray, gram_inv: np.ndarray) -> np.ndarray:
    """float64[f]: ``gram_inv · weighted_sum``, for a caller that already holds
    ``Σ_i w_i V_i`` (the profile accumulates it event by event, with decay; a dismiss's
    negative weight counts against an offer's direction)."""
    G = np.asarray(gram_inv, dtype=np.float64)
    s = np.asarray(weighted_sum, dtype=np.float64)
    if G.ndim != 2 or G.shape != (s.size, s.size) or s.ndim != 1:
        raise InputError(
            f"weighted_sum: expected [f] matching gram_inv {G.shape}, got shape {s.shape}"
        )
    out: np.ndarray = G @ s
    return out


def nearest_cohort(
    u: object, centroids: object, ids: object, *, min_cosine: float = -1.0
) -> int | None:
    """The id of the centroid nearest to ``u`` in direction (largest cosine), ties to the
    lowest id; None when ``u`` is zero, there is no cohort, or the largest cosine is below
    ``min_cosine`` (the device stays at the root).

    Raises:
        InputError: naming the argument and what was expected.
    """
    C = _matrix(centroids, "centroids") if np.size(np.asarray(centroids)) else None
    try:
        v = np.asarray(u, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"u: expected a numeric vector, got {type(u).__name__}") from e
    if v.ndim != 1 or v.size < 1 or not np.all(np.isfinite(v)):
        raise InputError(f"u: expected a finite 1-D vector, got shape {v.shape}")
    if isinstance(min_cosine, bool) or not isinstance(min_cosine, (int, float)):
        raise InputError(f"min_cosine: expected a number in [-1, 1], got {min_cosine!r}")
    if not -1.0 <= min_cosine <= 1.0:
        raise InputError(f"min_cosine: expected a number in [-1, 1], got {min_cosine!r}")
    ids_a = np.asarray(ids)
    if C is None:
        if ids_a.size:
            raise InputError(f"ids: expected none for no centroids, got {ids_a.size}")
        return None
    if C.shape[1] != v.size:
        raise InputError(f"centroids: expected [C, {v.size}] to match u, got shape {C.shape}")
    if ids_a.shape != (C.shape[0],) or ids_a.dtype.kind not in "iu":
        raise InputError(f"ids: expected int[{C.shape[0]}], got {ids_a.dtype}{ids_a.shape}")
    norm = float(np.sqrt(v @ v))
    if norm == 0.0:
        return None
    norms = np.sqrt(np.einsum("cf,cf->c", C, C))
    cos = np.where(norms > 0, (C @ (v / norm)) / np.where(norms > 0, norms, 1.0), -np.inf)
    best = cos.max()
    if not np.isfinite(best) or best < min_cosine:
        return None
    return int(ids_a[cos == best].min())
