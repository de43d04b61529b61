"""The temporal split: per user, the last 20% of ratings (by timestamp, then item id) are the
test set; validation is carved the same way from the remaining training ratings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.movielens import MovieLens100K

__all__ = ["Split", "histories_split", "temporal_split"]


@dataclass(frozen=True)
class Split:
    """Row indices into the ratings, per part, and the held-out items per user."""

    train: np.ndarray  # int64 rows, sorted by (user, timestamp, item)
    test: np.ndarray
    n_users: int
    n_items: int
    user: np.ndarray  # int64[n_ratings], 0-based
    item: np.ndarray  # int64[n_ratings], 0-based
    timestamp: np.ndarray  # int64[n_ratings]

    def items(self, part: str = "test") -> list[set[int]]:
        """Per user, the items of one part (`"test"` or `"train"`)."""
        rows = self.test if part == "test" else self.train
        out: list[set[int]] = [set() for _ in range(self.n_users)]
        for u, i in zip(self.user[rows].tolist(), self.item[rows].tolist(), strict=True):
            out[u].add(i)
        return out

    def carve_validation(self, share: float = 0.2) -> Split:
        """The training part split again the same way: train′ and validation (as ``test``)."""
        return _split_rows(
            self.train, self.user, self.item, self.timestamp, share, self.n_users, self.n_items
        )

    def subsample_users(self, users: np.ndarray) -> Split:
        keep = np.zeros(self.n_users, dtype=bool)
        keep[users] = True
        return Split(
            self.train[keep[self.user[self.train]]],
            self.test[keep[self.user[self.test]]],
            self.n_users,
            self.n_items,
            self.user,
            self.item,
            self.timestamp,
        )


def _split_rows(
    rows: np.ndarray,
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    share: float,
    n_users: int,
    n_items: int,
) -> Split:
    order = rows[np.lexsort((item[rows], ts[rows], user[rows]))]
    train, test = [], []
    bounds = np.flatnonzero(np.diff(user[order])) + 1
    for chunk in np.split(order, bounds):
        if chunk.size == 0:
            continue
        n_test = int(share * chunk.size + 0.5)  # round half up: 20% of 22 ratings is 4
        train.append(chunk[: chunk.size - n_test])
        test.append(chunk[chunk.size - n_test :])
    return Split(np.concatenate(train), np.concatenate(test), n_users, n_items, user, item, ts)


def temporal_split(data: MovieLens100K, share: float = 0.2) -> Split:
    """Per user, the last ``share`` of ratings by (timestamp, item id) are the test set."""
    user = data.ratings.user.astype(np.int64) - 1
    item = data.ratings.item.astype(np.int64) - 1
    ts = data.ratings.timestamp.astype(np.int64)
    return _split_rows(
        np.arange(len(user)), user, item, ts, share, len(data.users), len(data.items)
    )


def histories_split(histories: list[np.ndarray], n_items: int, share: float = 0.2) -> Split:
    """The same split of ordered histories (each user's items, earliest first): the draw
    position stands in for the timestamp."""
    sizes = np.array([h.size for h in histories], dtype=np.int64)
    user = np.repeat(np.arange(len(histories), dtype=np.int64), sizes)
    item = np.concatenate(histories).astype(np.int64) if histories else np.zeros(0, np.int64)
    ts = np.arange(user.size, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return _split_rows(np.arange(user.size), user, item, ts, share, len(histories), n_items)
