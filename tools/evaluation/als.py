"""The centralised reference: `implicit`'s ALS on all the raw training data, tuned on the
validation split with the same budget as localrank's own knobs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tools.evaluation.metrics import Quality, quality
from tools.evaluation.split import Split

__all__ = ["AlsParams", "als_rankings", "tune_als"]


@dataclass(frozen=True)
class AlsParams:
    factors: int = 32
    regularization: float = 0.05
    alpha: float = 10.0
    iterations: int = 15


def _matrix(split: Split) -> sp.csr_matrix:
    rows = split.train
    return sp.csr_matrix(
        (np.ones(rows.size, np.float32), (split.user[rows], split.item[rows])),
        shape=(split.n_users, split.n_items),
    )


def als_rankings(
    split: Split,
    params: AlsParams,
    k: int = 10,
    seed: int = 0,
    users: np.ndarray | None = None,
) -> list[list[int]]:
    """Top-k unseen items per user from ALS trained on ``split.train`` (for ``users`` only,
    in their order, when given: a large fleet is scored on a sample)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    X = _matrix(split)
    # implicit parallelises itself; a BLAS thread pool under it only contends (its own advice,
    # which it checks when the model is made)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            random_state=seed,
        )
        model.fit(X, show_progress=False)
    if users is None:
        scores = np.asarray(model.user_factors) @ np.asarray(model.item_factors).T
        scores[X.nonzero()] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :k]
        return [row.tolist() for row in top]
    scores = np.asarray(model.user_factors)[users] @ np.asarray(model.item_factors).T
    scores[X[users].nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :k]
    return [row.tolist() for row in top]


def tune_als(split: Split, budget: int, seed: int = 0) -> tuple[AlsParams, Quality]:
    """Random search over ALS's knobs on the validation carved from ``split``'s training part;
    ``budget`` configurations, the same budget localrank's knobs get."""
    val = split.carve_validation()
    relevant = val.items("test")
    rng = np.random.default_rng(seed)
    best: tuple[AlsParams, Quality] | None = None
    grid = [AlsParams()]
    while len(grid) < budget:
        grid.append(
            AlsParams(
                factors=int(rng.choice([8, 16, 32, 64, 128])),
                regularization=float(10 ** rng.uniform(-3, 0)),
                alpha=float(10 ** rng.uniform(0, 1.7)),
                iterations=int(rng.choice([10, 15, 25])),
            )
        )
    for params in grid[:budget]:
        q = quality(als_rankings(val, params, seed=seed), relevant, val.n_items)
        if best is None or q.ndcg > best[1].ndcg:
            best = (params, q)
    assert best is not None
    return best
