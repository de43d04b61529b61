"""The device side of learned cohorts without the engine: fold-ins, nearest cohorts and the
ranking score, for studies that run the product's mathematics over many devices at once
(``benches/cohort_study.py``, :mod:`tools.evaluation.scale`).

Each device goes through the product's own functions (:func:`localrank.device.fold_in.fold_in`
and :func:`~localrank.device.fold_in.nearest_cohort`), one call per device, so a study measures
exactly what a phone would compute.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from localrank.bundle.cohorts import CohortPayload
from localrank.device.fold_in import fold_in, nearest_cohort
from tools.evaluation.split import Split

__all__ = ["assign", "fold_ins", "own_items", "popularity_bias", "rank"]


def own_items(split: Split) -> list[np.ndarray]:
    """Each user's distinct training items, sorted."""
    rows = split.train
    out: list[list[int]] = [[] for _ in range(split.n_users)]
    for u, i in zip(split.user[rows].tolist(), split.item[rows].tolist(), strict=True):
        out[u].append(i)
    return [np.array(sorted(set(x)), dtype=np.int64) for x in out]


def fold_ins(payload: CohortPayload, items: Sequence[np.ndarray]) -> np.ndarray:
    """float64[devices, f]: each device's fold-in of its items (weight 1 each)."""
    f = payload.factors.shape[1]
    U = np.zeros((len(items), f))
    for d, own in enumerate(items):
        U[d] = fold_in(payload.factors[own], np.ones(own.size), payload.gram_inv)
    return U


def assign(payload: CohortPayload, U: np.ndarray) -> np.ndarray:
    """Each device's cohort row (index into payload.ids), -1 at the root."""
    row_of = {int(c): r for r, c in enumerate(payload.ids.tolist())}
    out = np.full(U.shape[0], -1, dtype=np.int64)
    for d in range(U.shape[0]):
        c = nearest_cohort(U[d], payload.centroids, payload.ids)
        if c is not None:
            out[d] = row_of[c]
    return out


def popularity_bias(pop: np.ndarray, weight: float) -> np.ndarray:
    """``weight · log1p(pop) / log1p(max pop)``, with ``pop`` clipped at 0: the bias the
    server publishes (``localrank.server.aggregate``), 0 everywhere when nothing is popular."""
    pop = np.clip(pop, 0, None)
    top = float(np.log1p(pop.max(initial=0.0)))
    out: np.ndarray = weight * np.log1p(pop) / top if top > 0 else np.zeros(pop.shape)
    return out


def rank(
    payload: CohortPayload | None,
    U: np.ndarray,
    pop: np.ndarray,
    beta: float,
    seen: Sequence[np.ndarray],
    k: int = 10,
    chunk: int = 4096,
) -> list[list[int]]:
    """Top ``k`` unseen items per device by ``w·V̂·u + β·log1p(pop)/log1p(max pop)``, ``w`` the
    payload's ``fold_in_weight`` (without a
    payload, or with ``U`` zero: by popularity alone), ties to the lowest item."""
    bias = popularity_bias(pop, beta)
    out: list[list[int]] = []
    # the learned term weighs as on a device: by the payload's measured share of signal
    V = None if payload is None else payload.fold_in_weight * payload.factors.astype(np.float64)
    for start in range(0, len(seen), chunk):
        stop = min(start + chunk, len(seen))
        S = np.repeat(bias[None, :], stop - start, axis=0)
        if V is not None:
            S += U[start:stop] @ V.T
        for d in range(start, stop):
            S[d - start, seen[d]] = -np.inf
        # a stable sort of −S: equal scores keep the item order
        top = np.argsort(-S, axis=1, kind="stable")[:, :k]
        out.extend(top.tolist())
    return out
