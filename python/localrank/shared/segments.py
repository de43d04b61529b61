"""Segments: the one fixed, deterministic domain of coarse audience cells.

A segment path is up to two non-sensitive categories and then a region, for example
``sci-fi``, ``sci-fi/comedy``, ``sci-fi/comedy/zip-9``; the root is the empty path. After them
come the *cohort slots* ``~0``, ``~1``, …: a reserved range of ids, children of the root, that
the server's learned interest cohorts occupy (their centroids travel in the bundle,
:mod:`localrank.bundle.cohorts`), so a cohort id travels in the wire contract's existing
``segment`` field. The one
builder, :func:`build_segments`, enumerates every path from the taxonomy's non-sensitive
categories and the region list up to a depth, in a fixed order; device and server both use it,
so a segment id means the same thing on both sides and ``d_seg`` is the LDP domain size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from localrank.errors import InputError
from localrank.shared.taxonomy import Taxonomy

__all__ = ["COHORT_PREFIX", "ROOT", "UNKNOWN_POPULATION", "SegmentTable", "build_segments"]

ROOT = 0
UNKNOWN_POPULATION = -1
#: A cohort slot's path is this prefix and its number; no category name may start with it.
COHORT_PREFIX = "~"


@dataclass(frozen=True)
class SegmentTable:
    """Segment ids are indices into ``paths``; id 0 is the root."""

    paths: tuple[str, ...]
    parents: np.ndarray  # int32[S], -1 for the root
    populations: np.ndarray  # int64[S], published noisy populations; -1 = unknown
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.paths or self.paths[0] != "":
            raise InputError("segments: expected the root (empty path) as segment 0")
        if self.parents.shape != (len(self.paths),) or self.populations.shape != (len(self.paths),):
            raise InputError("segments: parents and populations must have one entry per path")
        self._index.update({p: i for i, p in enumerate(self.paths)})

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def d_seg(self) -> int:
        """The size of the segment domain every LDP oracle uses."""
        return len(self.paths)

    def id_of(self, path: str) -> int:
        try:
            return self._index[path]
        except KeyError:
            raise InputError(
                f"segment: expected a path of the segment table, got {path!r}"
            ) from None

    def ancestors(self, segment: int) -> list[int]:
        """``segment``, its parent, ..., the root."""
        chain = [segment]
        while chain[-1] != ROOT:
            chain.append(int(self.parents[chain[-1]]))
        return chain

    def active(self, finest: int, min_population: int) -> int:
        """The finest ancestor of ``finest`` (itself included) whose published population is
        at least ``min_population``. The root is always allowed."""
        for s in self.ancestors(finest):
            if s == ROOT or self.populations[s] >= min_population:
                return s
        return ROOT

    def finest(self, categories: Sequence[str], region: str | None) -> int:
        """The deepest segment for a device's top categories (best first, non-sensitive, at
        most two used) and region (None where policy does not allow it)."""
        parts: list[str] = []
        for c in categories[:2]:
            candidate = "/".join([*parts, c])
            if candidate not in self._index:
                break
            parts.append(c)
        if region is not None and len(parts) == 2:
            with_region = "/".join([*parts, region])
            if with_region in self._index:
                parts.append(region)
        return self._index["/".join(parts)]

    def with_populations(self, populations: np.ndarray) -> SegmentTable:
        pops = np.asarray(populations, dtype=np.int64)
        if pops.shape != (len(self.paths),):
            raise InputError(f"populations: expected shape ({len(self.paths)},), got {pops.shape}")
        return SegmentTable(self.paths, self.parents, pops)

    @property
    def cohort_ids(self) -> range:
        """The segment ids reserved for cohorts (the last ones; empty without slots)."""
        n = sum(1 for p in self.paths[-1::-1] if p.startswith(COHORT_PREFIX))
        return range(len(self.paths) - n, len(self.paths))

    def is_cohort(self, segment: int) -> bool:
        return self.paths[segment].startswith(COHORT_PREFIX)

    def depth_of(self, segment: int) -> int:
        path = self.paths[segment]
        return 0 if path == "" else path.count("/") + 1


def build_segments(
    taxonomy: Taxonomy, regions: Sequence[str], depth: int = 3, cohort_slots: int = 0
) -> SegmentTable:
    """Enumerate the segment domain, deterministically.

    Order: the root; at depth ≥ 1 each non-sensitive category (taxonomy order); each ordered
    pair of
    distinct non-sensitive categories (``first/second``, where first is the stronger interest);
    then, at depth 3, each pair followed by each region (region list order); then the
    ``cohort_slots`` cohort slots ``~0``, ``~1``, … (children of the root).
    """
    if depth not in (0, 1, 2, 3):
        raise InputError(f"depth: expected 0, 1, 2 or 3, got {depth!r}")
    if isinstance(cohort_slots, bool) or not isinstance(cohort_slots, int) or cohort_slots < 0:
        raise InputError(f"cohort_slots: expected an integer ≥ 0, got {cohort_slots!r}")
    if len(set(regions)) != len(regions):
        raise InputError("regions: expected unique region names")
    cats = taxonomy.non_sensitive
    paths: list[str] = [""]
    parents: list[int] = [-1]
    index: dict[str, int] = {"": ROOT}

    def add(path: str, parent: str) -> None:
        index[path] = len(paths)
        paths.append(path)
        parents.append(index[parent])

    if depth >= 1:
        for a in cats:
            add(a, "")
    if depth >= 2:
        for a in cats:
            for b in cats:
                if a != b:
                    add(f"{a}/{b}", a)
    if depth >= 3:
        for a in cats:
            for b in cats:
                if a != b:
                    for r in regions:
                        add(f"{a}/{b}/{r}", f"{a}/{b}")
    for j in range(cohort_slots):
        add(f"{COHORT_PREFIX}{j}", "")
    return SegmentTable(
        tuple(paths),
        np.array(parents, dtype=np.int32),
        np.full(len(paths), UNKNOWN_POPULATION, dtype=np.int64),
    )
