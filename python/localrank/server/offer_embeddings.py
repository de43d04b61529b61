"""Offer embeddings learned from the segment × offer engagement aggregate, in the bundle's ``d``.

Method: **PPMI + truncated SVD**, next to the content embeddings.

1. ``X[i, s]`` is offer ``i``'s estimated positive engagement in tracked segment ``s``
   (clipped at 0; noisy estimates can be negative).
2. Positive pointwise mutual information, ``PPMI = max(0, log(P[i, s] / (P[i]·P[s])))``,
   removes popularity: an offer scores high for a segment that engages with it more than with
   offers in general. SVD of the PPMI matrix is the classic factorisation of co-occurrence
   (Levy and Goldberg 2014 show skip-gram with negative sampling factorises a shifted PMI
   matrix); with few segments it is exact and cheap, and it is deterministic (signs fixed so
   each component's largest entry is positive), so the same aggregate gives the same bundle.
3. The aggregate has at most ``T`` (tracked segments) columns, so it supports at most
   ``r = min(T − 1, d // 2)`` components. The embedding keeps both kinds of knowledge in
   separate coordinates: the first ``d − r`` carry the content embeddings (projected onto
   their top ``d − r`` principal directions), the last ``r`` the learned factors. The blend
   weight of the learned part grows with the offer's engagement, ``w_i = w_max·m_i/(m_i + κ)``,
   and ``E_i = [√(1 − w_i)·ĉ_i, √w_i·ẑ_i]`` with unit ``ĉ_i`` and ``ẑ_i``, so
   ``E_i·E_j = (1 − w_i)^½(1 − w_j)^½ ĉ_i·ĉ_j + (w_i w_j)^½ ẑ_i·ẑ_j``: no cross terms, every row
   unit length, and an offer nobody engaged with keeps its content geometry.

Why not ALS or a neural model: the aggregate is tiny (offers × tens of segments), already
noised, and public; a closed-form, deterministic factorisation with no hyper-parameters to
tune per run is easier to audit and reproduce. The embedding version names the method and a
digest of the result, so devices rebuild ``u`` exactly when the embeddings change.
"""

from __future__ import annotations

import hashlib

import numpy as np

from localrank.errors import InputError

__all__ = ["embedding_version", "learned_embeddings"]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return out


def _fix_signs(u: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[idx, np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    out: np.ndarray = u * signs
    return out


def learned_embeddings(
    scores: np.ndarray,
    content: np.ndarray,
    *,
    max_weight: float = 0.5,
    confidence: float = 20.0,
) -> np.ndarray | None:
    """float32[offers, d] embeddings, or None when the aggregate carries no signal (fewer than
    two tracked segments, or no positive engagement).

    Args:
        scores: ``X``, float ``[offers, T]`` engagement estimates.
        content: float ``[offers, d]`` content embeddings.
        max_weight: ``w_max``, the largest share of an embedding the learned part may take.
        confidence: ``κ``, the engagement at which an offer's learned part reaches half of
            ``w_max``.

    Raises:
        InputError: naming the argument.
    """
    X = np.clip(np.asarray(scores, dtype=np.float64), 0, None)
    C = np.asarray(content, dtype=np.float64)
    if X.ndim != 2 or C.ndim != 2 or X.shape[0] != C.shape[0]:
        raise InputError(f"scores: expected [offers, T] matching content {C.shape}, got {X.shape}")
    if not 0 <= max_weight <= 1:
        raise InputError(f"max_weight: expected a number in [0, 1], got {max_weight}")
    if not confidence > 0:
        raise InputError(f"confidence: expected > 0, got {confidence}")
    _n, d = C.shape
    T = X.shape[1]
    total = X.sum()
    if T < 2 or total <= 0 or d < 2:
        return None
    P = X / total
    pr = P.sum(axis=1, keepdims=True)
    pc = P.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(P / (pr * pc))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    U, S, _ = np.linalg.svd(ppmi, full_matrices=False)
    r = int(min(T - 1, d // 2, np.sum(1e-9 * max(S[0], 1e-300) < S)))
    if r < 1:
        return None
    Z = _unit_rows(_fix_signs(U[:, :r]) * np.sqrt(S[:r]))
    _, _, Vt = np.linalg.svd(C, full_matrices=False)
    Vt = _fix_signs(Vt.T).T
    Cp = _unit_rows(C @ Vt[: d - r].T)
    if Cp.shape[1] < d - r:  # fewer offers than dimensions: pad
        Cp = np.pad(Cp, ((0, 0), (0, d - r - Cp.shape[1])))
    mass = X.sum(axis=1)
    w = max_weight * mass / (mass + confidence)
    w = np.where(np.linalg.norm(Z, axis=1) > 0, w, 0.0)[:, None]
    E = np.hstack([np.sqrt(1 - w) * Cp, np.sqrt(w) * Z])
    out: np.ndarray = E.astype(np.float32)
    return out


def embedding_version(embeddings: np.ndarray, method: str = "ppmi-svd") -> str:
    """``<method>-<digest>``: changes exactly when the embeddings do."""
    digest = hashlib.sha256(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    return f"{method}-{digest.hexdigest()[:16]}"
