"""The offer catalog: public offers in columnar arrays, as the bundle carries them.

Offers are public: ids, titles, categories, an optional place (local deals), the contexts they
may appear in, validity, and a bias. Embeddings start from public content only
(:func:`content_embeddings`) and are later replaced by ones the server learns from
segment × offer aggregates, in the same dimension.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localrank.errors import InputError
from localrank.shared.geo import validate_location
from localrank.shared.taxonomy import Taxonomy

__all__ = ["Catalog", "Offer", "content_embeddings", "load_offers"]

ALL_CONTEXTS = 0xFFFF_FFFF
MAX_CONTEXTS = 32


@dataclass(frozen=True)
class Offer:
    """One public offer, as a catalog file describes it."""

    id: str
    title: str
    categories: tuple[str, ...]
    location: tuple[float, float] | None = None
    radius_km: float = 0.0
    contexts: tuple[str, ...] = ()  # empty: every context
    valid_from: float = -math.inf
    valid_until: float = math.inf
    bias: float = 0.0


def _float(value: Any, arg: str, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{arg}: expected a number, got {value!r}") from None
    if math.isnan(out):
        raise InputError(f"{arg}: expected a number, got NaN")
    return out


def _offer_from_mapping(item: Mapping[str, Any], where: str) -> Offer:
    known = {
        "id",
        "title",
        "categories",
        "lat",
        "lon",
        "radius_km",
        "contexts",
        "valid_from",
        "valid_until",
        "bias",
    }
    unknown = set(item) - known
    if unknown:
        raise InputError(f"{where}: unknown fields {sorted(unknown)}; expected {sorted(known)}")
    oid, title = item.get("id"), item.get("title")
    if not isinstance(oid, str) or not oid:
        raise InputError(f"{where}.id: expected a non-empty string, got {oid!r}")
    if not isinstance(title, str) or not title:
        raise InputError(f"{where}.title: expected a non-empty string, got {title!r}")
    cats = item.get("categories")
    if isinstance(cats, str):
        cats = [c for c in cats.split("|") if c]
    if not isinstance(cats, (list, tuple)) or not cats or not all(isinstance(c, str) for c in cats):
        raise InputError(f"{where}.categories: expected a non-empty list of names, got {cats!r}")
    ctx = item.get("contexts") or ()
    if isinstance(ctx, str):
        ctx = [c for c in ctx.split("|") if c]
    lat, lon = item.get("lat"), item.get("lon")
    location = None
    if lat not in (None, "") or lon not in (None, ""):
        location = validate_location(
            (_float(lat, f"{where}.lat", math.nan), _float(lon, f"{where}.lon", math.nan)),
            f"{where}.lat/lon",
        )
    radius = _float(item.get("radius_km"), f"{where}.radius_km", 0.0)
    if location is not None and not radius > 0:
        raise InputError(f"{where}.radius_km: expected > 0 for a local offer, got {radius}")
    return Offer(
        id=oid,
        title=title,
        categories=tuple(cats),
        location=location,
        radius_km=radius if location is not None else 0.0,
        contexts=tuple(ctx),
        valid_from=_float(item.get("valid_from"), f"{where}.valid_from", -math.inf),
        valid_until=_float(item.get("valid_until"), f"{where}.valid_until", math.inf),
        bias=_float(item.get("bias"), f"{where}.bias", 0.0),
    )


def load_offers(path: str | Path) -> list[Offer]:
    """Read offers from a JSON file (a list of objects, or ``{"offers": [...]}``) or a CSV file
    with a header row (``categories`` and ``contexts`` are ``|``-separated)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"catalog: cannot read {p}: {e}") from e
    if p.suffix.lower() == ".csv":
        rows: Iterable[Mapping[str, Any]] = list(csv.DictReader(io.StringIO(text)))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"catalog: {p} is not valid JSON: {e}") from e
        rows = data.get("offers", []) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise InputError("catalog: expected a JSON list of offers")
    offers = [_offer_from_mapping(r, f"offers[{i}]") for i, r in enumerate(rows)]
    ids = [o.id for o in offers]
    if len(set(ids)) != len(ids):
        raise InputError("catalog: offer ids must be unique")
    return offers


# ---------------------------------------------------------------------------------------------
# Content embeddings


def _token_vector(token: str, d: int) -> np.ndarray:
    """A ±1/√d vector derived from SHA-256 of the token: the same on every machine and numpy
    version (a random generator's stream is not promised to stay the same across versions)."""
    need = (d + 255) // 256
    raw = b"".join(
        hashlib.sha256(f"localrank-content/1:{token}:{i}".encode()).digest() for i in range(need)
    )
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:d]
    out: np.ndarray = (bits.astype(np.float32) * 2 - 1) / np.float32(math.sqrt(d))
    return out


def content_embeddings(
    categories: Sequence[Sequence[str]], taxonomy: Taxonomy, d: int, *, local: Sequence[bool]
) -> np.ndarray:
    """Embeddings from public content only: each offer is the normalised mean of its categories'
    vectors (plus half its parents' vectors, so siblings are similar), nudged by a "local"
    feature. Vectors come from hashing, so the result is deterministic.

    The arithmetic is float64, element by element, with the norm's sum of squares taken by
    ``math.fsum`` (correctly rounded, so independent of summation order) and one rounding to
    float32 at the end: no BLAS call, whose reduction order depends on the CPU, so the committed
    demo bundle has the same bytes on every machine."""
    if d < 1:
        raise InputError(f"d: expected ≥ 1, got {d}")
    cache: dict[str, np.ndarray] = {}

    def vec(token: str) -> np.ndarray:
        if token not in cache:
            cache[token] = _token_vector(token, d).astype(np.float64)
        return cache[token]

    out = np.zeros((len(categories), d), dtype=np.float32)
    for i, cats in enumerate(categories):
        v = np.zeros(d, dtype=np.float64)
        for c in cats:
            v += vec("category:" + c)
            parent = taxonomy[taxonomy.index(c)].parent
            if parent is not None:
                v += 0.5 * vec("category:" + parent)
        v /= max(1, len(cats))
        if local[i]:
            v += 0.25 * vec("feature:local")
        norm = math.sqrt(math.fsum((v * v).tolist()))
        out[i] = (v / norm if norm > 0 else v).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# The columnar catalog


@dataclass(frozen=True)
class Catalog:
    """Offers as arrays. Index ``i`` is the offer's row in the kernel."""

    ids: tuple[str, ...]
    titles: tuple[str, ...]
    category: np.ndarray  # int32[n]: primary category id (the kernel's prior lookup)
    cat_indptr: np.ndarray  # int32[n+1]: CSR over all of an offer's categories
    cat_indices: np.ndarray  # int32[nnz]
    sensitive: np.ndarray  # bool[n]: any category sensitive
    contexts: np.ndarray  # uint32[n]: bit c set = may appear in context id c
    valid_from: np.ndarray  # float64[n] (POSIX seconds, -inf = always)
    valid_until: np.ndarray  # float64[n] (+inf = never expires)
    lat: np.ndarray  # float32[n], NaN = not a local offer
    lon: np.ndarray  # float32[n]
    radius_km: np.ndarray  # float32[n]
    bias: np.ndarray  # float32[n]
    embeddings: np.ndarray  # float32[n, d]

    def __post_init__(self) -> None:
        """Refuse a catalog the kernel could not rank with: inconsistent lengths, duplicate
        ids, non-finite embeddings or biases, a broken category index."""
        n = len(self.ids)
        if len(self.titles) != n:
            raise InputError(f"catalog: {n} ids but {len(self.titles)} titles")
        if len(set(self.ids)) != n:
            dup = sorted(i for i, k in Counter(self.ids).items() if k > 1)
            raise InputError(f"catalog: offer ids must be unique, got duplicates {dup[:5]}")
        for name in (
            "category",
            "sensitive",
            "contexts",
            "valid_from",
            "valid_until",
            "lat",
            "lon",
            "radius_km",
            "bias",
        ):
            shape = np.shape(getattr(self, name))
            if shape != (n,):
                raise InputError(f"catalog: {name} has shape {shape}, expected ({n},)")
        if np.ndim(self.embeddings) != 2 or np.shape(self.embeddings)[0] != n:
            raise InputError(
                f"embeddings: expected shape ({n}, d), got {np.shape(self.embeddings)}"
            )
        if not np.all(np.isfinite(self.embeddings)):
            raise InputError("embeddings: expected finite values")
        if not np.all(np.isfinite(self.bias)):
            raise InputError("bias: expected finite values for every offer")
        indptr, indices = np.asarray(self.cat_indptr), np.asarray(self.cat_indices)
        if (
            indptr.shape != (n + 1,)
            or indices.ndim != 1
            or (n + 1 and (indptr[0] != 0 or indptr[-1] != len(indices)))
            or np.any(np.diff(indptr) < 1)
        ):
            raise InputError("catalog: the category index (cat_indptr) is inconsistent")
        if n and not np.array_equal(np.asarray(self.category), indices[indptr[:-1]]):
            raise InputError("catalog: category must be each offer's first category")
        local = ~np.isnan(self.lat)
        if not np.array_equal(local, ~np.isnan(self.lon)) or not np.all(
            np.isfinite(self.radius_km[local]) & (self.radius_km[local] > 0)
        ):
            raise InputError("catalog: a local offer needs lat, lon and a radius > 0")
        if np.any(np.isnan(self.valid_from)) or np.any(np.isnan(self.valid_until)):
            raise InputError("catalog: validity times must not be NaN")

    def check_categories(self, n_categories: int) -> None:
        """Every category id names one of the taxonomy's ``n_categories``."""
        idx = np.asarray(self.cat_indices)
        if idx.size and (idx.min() < 0 or idx.max() >= n_categories):
            raise InputError(
                f"catalog: category ids must lie in [0, {n_categories}), got "
                f"{int(idx.min())}..{int(idx.max())}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def d(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def local(self) -> np.ndarray:
        """bool[n]: offers tied to a place."""
        local: np.ndarray = ~np.isnan(self.lat)
        return local

    @property
    def row_of(self) -> Mapping[str, int]:
        """Offer id → row, for converting many ids at once (do not modify)."""
        idx: dict[str, int] | None = self.__dict__.get("_idx")
        if idx is None:
            idx = {o: i for i, o in enumerate(self.ids)}
            object.__setattr__(self, "_idx", idx)
        return idx

    def index_of(self, offer_id: str) -> int:
        idx = self.row_of
        try:
            return idx[offer_id]
        except KeyError:
            raise InputError(
                f"offer: expected an offer id from the catalog, got {offer_id!r}"
            ) from None

    def categories_of(self, i: int) -> np.ndarray:
        return self.cat_indices[self.cat_indptr[i] : self.cat_indptr[i + 1]]

    @classmethod
    def from_offers(
        cls,
        offers: Sequence[Offer],
        taxonomy: Taxonomy,
        contexts: Sequence[str],
        *,
        d: int,
        embeddings: np.ndarray | None = None,
    ) -> Catalog:
        """Columnar arrays from offers; embeddings from public content unless given."""
        if len(contexts) > MAX_CONTEXTS:
            raise InputError(f"contexts: at most {MAX_CONTEXTS}, got {len(contexts)}")
        ctx_index = {c: i for i, c in enumerate(contexts)}
        n = len(offers)
        indptr = np.zeros(n + 1, dtype=np.int32)
        indices: list[int] = []
        ctx_mask = np.zeros(n, dtype=np.uint32)
        sensitive_ids = taxonomy.sensitive_mask
        for i, o in enumerate(offers):
            ids = [taxonomy.index(c) for c in o.categories]
            indices.extend(ids)
            indptr[i + 1] = len(indices)
            if o.contexts:
                mask = 0
                for c in o.contexts:
                    if c not in ctx_index:
                        raise InputError(
                            f"offers[{i}].contexts: unknown context {c!r}; "
                            f"expected {list(contexts)}"
                        )
                    mask |= 1 << ctx_index[c]
                ctx_mask[i] = mask
            else:
                ctx_mask[i] = (1 << len(contexts)) - 1
        cat_indices = np.array(indices, dtype=np.int32)
        primary = cat_indices[indptr[:-1]] if n else np.zeros(0, np.int32)
        sensitive = np.array(
            [bool(sensitive_ids[cat_indices[indptr[i] : indptr[i + 1]]].any()) for i in range(n)],
            dtype=bool,
        )
        local = [o.location is not None for o in offers]
        if embeddings is None:
            embeddings = content_embeddings(
                [o.categories for o in offers], taxonomy, d, local=local
            )
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.shape != (n, d):
            raise InputError(f"embeddings: expected shape ({n}, {d}), got {emb.shape}")
        return cls(
            ids=tuple(o.id for o in offers),
            titles=tuple(o.title for o in offers),
            category=primary.astype(np.int32),
            cat_indptr=indptr,
            cat_indices=cat_indices,
            sensitive=sensitive,
            contexts=ctx_mask,
            valid_from=np.array([o.valid_from for o in offers], dtype=np.float64),
            valid_until=np.array([o.valid_until for o in offers], dtype=np.float64),
            lat=np.array([o.location[0] if o.location else np.nan for o in offers], np.float32),
            lon=np.array([o.location[1] if o.location else np.nan for o in offers], np.float32),
            radius_km=np.array([o.radius_km for o in offers], dtype=np.float32),
            bias=np.array([o.bias for o in offers], dtype=np.float32),
            embeddings=emb,
        )

    # -- bundle arrays ---------------------------------------------------------------------

    ARRAYS = (
        "category",
        "cat_indptr",
        "cat_indices",
        "sensitive",
        "contexts",
        "valid_from",
        "valid_until",
        "lat",
        "lon",
        "radius_km",
        "bias",
        "embeddings",
    )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The catalog as named arrays for the bundle (``offer_*``)."""
        out = {f"offer_{name}": getattr(self, name) for name in self.ARRAYS}
        out["offer_ids"] = np.array(self.ids, dtype=np.str_)
        # Titles are long: UTF-8 JSON bytes, not numpy's four bytes per character.
        out["offer_titles"] = np.frombuffer(
            json.dumps(list(self.titles), ensure_ascii=False, separators=(",", ":")).encode(),
            dtype=np.uint8,
        )
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Catalog:
        try:
            fields = {name: arrays[f"offer_{name}"] for name in cls.ARRAYS}
            ids = tuple(str(x) for x in arrays["offer_ids"].tolist())
            raw = arrays["offer_titles"]
            if raw.dtype != np.uint8:
                raise InputError("offer_titles: expected UTF-8 JSON bytes")
            titles = tuple(json.loads(raw.tobytes().decode()))
        except KeyError as e:
            raise InputError(f"bundle: missing catalog array {e}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"offer_titles: not a JSON list of strings: {e}") from None
        if len(titles) != len(ids) or not all(isinstance(t, str) for t in titles):
            raise InputError(f"offer_titles: expected {len(ids)} strings")
        return cls(ids=ids, titles=titles, **fields)
