"""Ranking metrics at k: NDCG, hit rate and catalog coverage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Quality", "quality"]


@dataclass(frozen=True)
class Quality:
    ndcg: float
    hr: float
    coverage: float
    users: int

    def as_dict(self) -> dict[str, float]:
        return {
            "ndcg@10": self.ndcg,
            "hr@10": self.hr,
            "coverage": self.coverage,
            "users": self.users,
        }


def quality(
    rankings: Sequence[Sequence[int]], relevant: Sequence[set[int]], n_items: int, k: int = 10
) -> Quality:
    """Mean NDCG@k and HR@k over users with at least one relevant item, and the share of the
    catalog that appears in any top-k."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ndcg, hits, shown, n = 0.0, 0.0, set(), 0
    for ranked, rel in zip(rankings, relevant, strict=True):
        if not rel:
            continue
        top = list(ranked)[:k]
        shown.update(top)
        gains = np.array([1.0 if i in rel else 0.0 for i in top] + [0.0] * (k - len(top)))
        ideal = discounts[: min(k, len(rel))].sum()
        ndcg += float(gains @ discounts) / ideal
        hits += 1.0 if gains.any() else 0.0
        n += 1
    return Quality(ndcg / max(n, 1), hits / max(n, 1), len(shown) / n_items, n)
