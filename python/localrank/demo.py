"""``localrank demo``: rank a synthetic catalog for a sample user and show the top 10.

This is the foundation's demo: it exercises the Rust kernel through the public API on a
deterministic synthetic catalog. Later stages replace it with the full device ↔ server story.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

import localrank

__all__ = ["SyntheticCatalog", "run", "synthetic_catalog"]

_CATEGORIES = (
    "groceries",
    "coffee",
    "books",
    "sci-fi",
    "outdoor",
    "electronics",
    "fashion",
    "travel",
)
_DEALS = ("10% off", "2 for 1", "free delivery", "£5 voucher", "members' price", "half price")


@dataclass(frozen=True)
class SyntheticCatalog:
    """A deterministic catalog of offers, built from a seed."""

    titles: list[str]
    category: np.ndarray  # int32[n]
    embeddings: np.ndarray  # float32[n, d]
    bias: np.ndarray  # float32[n]
    eligible: np.ndarray  # bool[n]

    @property
    def size(self) -> int:
        return len(self.titles)


def synthetic_catalog(n: int = 10_000, d: int = 64, seed: int = 7) -> SyntheticCatalog:
    """Build ``n`` offers with category-clustered embeddings of width ``d``."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(_CATEGORIES), d)).astype(np.float32)
    category = rng.integers(0, len(_CATEGORIES), size=n, dtype=np.int32)
    noise = rng.standard_normal((n, d)).astype(np.float32)
    embeddings = (centers[category] + 0.7 * noise) / np.sqrt(d, dtype=np.float32)
    bias = (0.1 * rng.standard_normal(n)).astype(np.float32)
    eligible = rng.random(n) > 0.05  # a few offers expired or capped
    titles = [f"{_DEALS[i % len(_DEALS)]} · {_CATEGORIES[c]} #{i}" for i, c in enumerate(category)]
    return SyntheticCatalog(titles, category, np.ascontiguousarray(embeddings), bias, eligible)


def run(console: Console | None = None, *, k: int = 10) -> list[tuple[int, float]]:
    """Rank the synthetic catalog for a sample user who likes sci-fi and books.

    Returns the ``(index, score)`` pairs shown.
    """
    console = console or Console()
    cat = synthetic_catalog()
    d = cat.embeddings.shape[1]
    rng = np.random.default_rng(11)
    # The sample user: the mean embedding of a few sci-fi and book offers they engaged with.
    liked_categories = [_CATEGORIES.index(c) for c in ("sci-fi", "books")]
    liked = np.flatnonzero(np.isin(cat.category, liked_categories))
    picks = rng.choice(liked, size=12, replace=False)
    u = cat.embeddings[picks].mean(axis=0).astype(np.float32) * np.float32(np.sqrt(d))
    prior = np.full(len(_CATEGORIES), 0.0, dtype=np.float32)
    prior[_CATEGORIES.index("coffee")] = 0.2  # the segment's prior nudges coffee

    idx, scores = localrank.score_topk(
        u, cat.embeddings, cat.bias, cat.category, prior, cat.eligible, k=k
    )
    table = Table(
        title=f"Top {k} of {cat.size:,} synthetic offers · kernel {localrank.default_kernel()}"
    )
    table.add_column("#", justify="right")
    table.add_column("offer", justify="right")
    table.add_column("title")
    table.add_column("category")
    table.add_column("score", justify="right")
    for rank, (i, s) in enumerate(zip(idx.tolist(), scores.tolist(), strict=True), start=1):
        table.add_row(str(rank), str(i), cat.titles[i], _CATEGORIES[cat.category[i]], f"{s:.4f}")
    console.print(table)
    return list(zip(idx.tolist(), scores.tolist(), strict=True))
