"""The category taxonomy: names, parents, and which categories are sensitive.

Sensitive categories (health, sexuality and intimate products, religion, politics, financial
distress and the like: the GDPR special categories) are never targeted from behaviour, never
part of a segment, and never reported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localrank.errors import InputError

__all__ = ["Category", "Taxonomy"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9&'._-]{0,47}$")


@dataclass(frozen=True)
class Category:
    """One category. ``name`` is a lowercase slug (it appears in segment paths)."""

    name: str
    sensitive: bool = False
    parent: str | None = None
    label: str | None = None

    @property
    def display(self) -> str:
        """The human label ("Sci-Fi"), or the name."""
        return self.label or self.name


@dataclass(frozen=True)
class Taxonomy:
    """An ordered list of categories; a category's index is its integer id."""

    categories: tuple[Category, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.categories]
        if not names:
            raise InputError("categories: expected at least one category, got none")
        for name in names:
            if not _NAME.match(name):
                raise InputError(
                    f"categories: expected lowercase slugs (a-z, 0-9, -_.&'), got {name!r}"
                )
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"categories: expected unique names, got duplicates {dup}")
        known = set(names)
        for c in self.categories:
            if c.parent is not None and c.parent not in known:
                raise InputError(f"categories: {c.name!r} has unknown parent {c.parent!r}")

    # -- lookups -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.categories)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def ids(self) -> Mapping[str, int]:
        """Category name → id, for converting many names at once (do not modify)."""
        return self._index

    def index(self, name: str) -> int:
        """The id of a category, or an InputError naming ``category``."""
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise InputError(
                f"category: expected one of the taxonomy's categories, got {name!r}"
            ) from None

    @property
    def _index(self) -> dict[str, int]:
        cached: dict[str, int] | None = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {c.name: i for i, c in enumerate(self.categories)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._index

    def __getitem__(self, i: int) -> Category:
        return self.categories[i]

    @property
    def sensitive_mask(self) -> np.ndarray:
        """bool[C]: which category ids are sensitive."""
        return np.array([c.sensitive for c in self.categories], dtype=bool)

    @property
    def non_sensitive(self) -> list[str]:
        """Names of the categories that may shape a segment, in taxonomy order."""
        return [c.name for c in self.categories if not c.sensitive]

    def is_sensitive(self, name: str) -> bool:
        return self.categories[self.index(name)].sensitive

    # -- (de)serialisation ---------------------------------------------------------------

    def to_json(self) -> list[dict[str, Any]]:
        """A JSON-ready list; keys sorted, defaults omitted, for deterministic bytes."""
        out: list[dict[str, Any]] = []
        for c in self.categories:
            item: dict[str, Any] = {"name": c.name, "sensitive": c.sensitive}
            if c.parent is not None:
                item["parent"] = c.parent
            if c.label is not None:
                item["label"] = c.label
            out.append(item)
        return out

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> Taxonomy:
        """From a list of ``{"name", "sensitive"?, "parent"?, "label"?}`` objects, or an object
        holding that list under ``"categories"``."""
        if isinstance(data, Mapping):
            data = data.get("categories", [])
        cats = []
        for i, item in enumerate(data):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise InputError(f"categories[{i}]: expected an object with a string 'name'")
            unknown = set(item) - {"name", "sensitive", "parent", "label"}
            if unknown:
                raise InputError(f"categories[{i}]: unknown keys {sorted(unknown)}")
            cats.append(
                Category(
                    name=item["name"],
                    sensitive=bool(item.get("sensitive", False)),
                    parent=item.get("parent"),
                    label=item.get("label"),
                )
            )
        return cls(tuple(cats))

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        """Read a taxonomy JSON file."""
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"taxonomy: cannot read {path}: {e}") from e
