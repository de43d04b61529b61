"""Centralised rankers built only from what may cross localrank's boundary, computed from the
raw training data with no noise, no budget and no threshold: how far the information itself
can go, as opposed to the privacy machinery.

- popularity: training ratings per movie (what level ``off`` estimates);
- segment popularity: training ratings per movie among users with the same top genre (the
  depth-1 segment), the most any per-segment statistic could tell a device.

Neither has a knob, so neither is tuned. ALS, by contrast, learns from which movies the *same*
user rated: co-engagement, which never leaves a device.
"""

from __future__ import annotations

import numpy as np

from tools.evaluation.split import Split
from tools.movielens import MovieLens100K

__all__ = ["popularity_rankings", "segment_popularity_rankings"]


def _top_unseen(scores: np.ndarray, seen: set[int], k: int) -> list[int]:
    s = scores.astype(np.float64).copy()
    if seen:
        s[list(seen)] = -np.inf
    # stable: ties to the lower item id, as localrank's kernel breaks them
    return [int(i) for i in np.argsort(-s, kind="stable")[:k]]


def popularity_rankings(split: Split, users: np.ndarray, k: int = 10) -> list[list[int]]:
    """Per user in ``users``, the most-rated training movies they have not rated."""
    rows = split.train
    pop = np.bincount(split.item[rows], minlength=split.n_items).astype(np.float64)
    seen = split.items("train")
    return [_top_unseen(pop, seen[u], k) for u in users.tolist()]


def segment_popularity_rankings(
    split: Split, data: MovieLens100K, users: np.ndarray, k: int = 10
) -> list[list[int]]:
    """Per user in ``users``, the most-rated training movies among users sharing their top
    genre (by share of training ratings, ties to the lower genre), with overall popularity
    breaking ties, excluding movies they have rated."""
    rows = split.train
    genres = np.zeros((split.n_items, len(data.genres)))
    for i, gs in enumerate(data.items.genres):
        for g in gs:
            genres[i, data.genres.index(g)] = 1.0 / len(gs)
    per_user = np.zeros((split.n_users, genres.shape[1]))
    np.add.at(per_user, split.user[rows], genres[split.item[rows]])
    top = np.argmax(per_user, axis=1)
    pop = np.bincount(split.item[rows], minlength=split.n_items).astype(np.float64)
    by_segment = np.zeros((genres.shape[1], split.n_items))
    np.add.at(by_segment, (top[split.user[rows]], split.item[rows]), 1.0)
    tiebreak = pop / (pop.max() + 1.0)  # < 1: only orders movies with equal segment counts
    seen = split.items("train")
    return [_top_unseen(by_segment[top[u]] + tiebreak, seen[u], k) for u in users.tolist()]
