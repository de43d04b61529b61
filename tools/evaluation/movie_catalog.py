"""MovieLens as a localrank catalog: each movie is an offer, its genres are its categories,
and each user is a device with on-device attributes (age band, occupation, ZIP region)."""

from __future__ import annotations

from dataclasses import replace

from localrank.bundle import BundleConfig
from localrank.shared.catalog import Catalog, Offer
from localrank.shared.geo import zip_region
from localrank.shared.taxonomy import Category, Taxonomy
from tools.demo_catalog import DEMO_CONTEXTS
from tools.movielens import GENRES, MovieLens100K

__all__ = [
    "CONTEXT",
    "REGIONS",
    "age_band",
    "movielens_catalog",
    "movielens_config",
    "movielens_taxonomy",
    "offer_id",
    "region_of_user",
]

#: The context every simulated app call names: a streaming app is "entertainment", whose
#: default policy allows purchases and browsing.
CONTEXT = "entertainment"
REGIONS = tuple(f"zip-{d}" for d in range(10))


def _slug(genre: str) -> str:
    return genre.lower()


def movielens_taxonomy() -> Taxonomy:
    """The 19 genres; none is a sensitive category."""
    return Taxonomy(tuple(Category(_slug(g), label=g) for g in GENRES))


def offer_id(item: int) -> str:
    """The public catalog id of a movie (0-based item index)."""
    return f"ml-{item + 1}"


def movielens_catalog(data: MovieLens100K, d: int) -> Catalog:
    """Every movie as an offer, embedded from its genres (public content only)."""
    taxonomy = movielens_taxonomy()
    offers = [
        Offer(
            id=offer_id(i),
            title=data.items.title[i],
            categories=tuple(_slug(g) for g in data.items.genres[i]) or ("unknown",),
        )
        for i in range(len(data.items))
    ]
    return Catalog.from_offers(offers, taxonomy, DEMO_CONTEXTS, d=d)


#: Learned interest cohorts replace the genre segments: round 0 is one cohort per genre, later
#: rounds learn them from what the fleet reports. 24 slots hold the 19 genres of round 0 and
#: the ~n/(1.5·k) cohorts the fleet supports at k ≥ 26; the genre paths leave the LDP domain
#: (depth 0), which keeps d_seg = 25, near the genre segments' 20 (the product's default depth,
#: 3 — genre/genre/region, 3,782 segments here — would need ~10⁵ devices to publish any).
COHORT_SLOTS = 24


def movielens_config(d: int = 32, **overrides: object) -> BundleConfig:
    """The product's default config for the MovieLens catalog, with learned cohorts, with
    ``overrides``."""
    base = BundleConfig(
        d=d, contexts=DEMO_CONTEXTS, regions=REGIONS, segment_depth=0, cohort_slots=COHORT_SLOTS
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def age_band(age: int) -> str:
    """MovieLens-1M's age bands."""
    for upper, band in (
        (18, "<18"),
        (25, "18-24"),
        (35, "25-34"),
        (45, "35-44"),
        (50, "45-49"),
        (56, "50-55"),
    ):
        if age < upper:
            return band
    return "56+"


def region_of_user(zip_code: str) -> str | None:
    """The ZIP region (first digit of a US ZIP code), None for Canadian postal codes."""
    region = zip_region(zip_code)
    return region if region in REGIONS else None
