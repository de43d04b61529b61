"""The embedded demo: taxonomy, contexts, regions and a ~2k-offer catalog, generated
deterministically, plus the signed demo bundle that ``make demo`` and the tests use.

``make models`` (``python -m tools.models``) rewrites ``models/`` from this module; two runs give
byte-identical files. The demo key in ``models/`` is committed on purpose: it signs only the
demo bundle, which has a far-future expiry. Production bundles use the server's own key.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path

from localrank.bundle import BundleConfig, build_bundle, generate_keypair
from localrank.shared.catalog import Catalog, Offer
from localrank.shared.geo import region_of
from localrank.shared.taxonomy import Category, Taxonomy

__all__ = [
    "DEMO_CONTEXTS",
    "DEMO_CREATED",
    "DEMO_EXPIRES",
    "DEMO_TAXONOMY",
    "demo_config",
    "demo_offers",
    "write_models",
]

DEMO_CONTEXTS = ("navigation", "game", "shopping", "news", "social", "health", "entertainment")

_C = Category
DEMO_TAXONOMY = Taxonomy(
    (
        _C("groceries", label="Groceries"),
        _C("coffee", label="Coffee", parent="food-and-drink"),
        _C("food-and-drink", label="Food & drink"),
        _C("restaurants", label="Restaurants", parent="food-and-drink"),
        _C("books", label="Books"),
        _C("sci-fi", label="Sci-Fi", parent="books"),
        _C("music", label="Music"),
        _C("movies", label="Movies"),
        _C("games", label="Games"),
        _C("electronics", label="Electronics"),
        _C("fashion", label="Fashion"),
        _C("sports", label="Sports"),
        _C("outdoor", label="Outdoor", parent="sports"),
        _C("travel", label="Travel"),
        _C("home", label="Home & garden"),
        _C("kids", label="Kids"),
        _C("pets", label="Pets"),
        # GDPR special categories and the like: never inferred, never in a segment, never
        # reported; shown only after an explicit opt-in, or at level "off".
        _C("health", label="Health", sensitive=True),
        _C("pharmacy", label="Pharmacy", parent="health", sensitive=True),
        _C("sexual-wellness", label="Sexual wellness", sensitive=True),
        _C("religion", label="Religion", sensitive=True),
        _C("politics", label="Politics", sensitive=True),
        _C("debt-relief", label="Debt relief", sensitive=True),
        _C("gambling", label="Gambling", sensitive=True),
    )
)

# Five demo cities; a local offer sits within ~10 km of one of them.
_CITIES = {
    "London": (51.5074, -0.1278),
    "Paris": (48.8566, 2.3522),
    "Berlin": (52.52, 13.405),
    "New York": (40.7128, -74.006),
    "San Francisco": (37.7749, -122.4194),
}
DEMO_REGIONS = tuple(sorted({region_of(c) for c in _CITIES.values()}))

DEMO_CREATED = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
DEMO_EXPIRES = datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp()

_DEALS = (
    "10% off",
    "2 for 1",
    "free delivery",
    "£5 off £30",
    "members' price",
    "half price",
    "free trial",
    "buy one, gift one",
    "20% off",
    "happy hour",
)
_MERCHANTS = {
    "groceries": ("FreshMart", "Green Basket", "Corner Grocer"),
    "coffee": ("Bean There", "Daily Grind", "Crema"),
    "food-and-drink": ("Street Eats", "The Larder"),
    "restaurants": ("Trattoria Uno", "Spice Route", "Noodle Bar"),
    "books": ("Paper Lantern", "Chapter & Verse"),
    "sci-fi": ("Starport Books", "Nebula Press"),
    "music": ("Vinyl Vault", "Soundwave"),
    "movies": ("Cinema Nova", "Reel House"),
    "games": ("Pixel Den", "Quest Shop"),
    "electronics": ("Circuit City", "Voltage"),
    "fashion": ("Threadline", "Atelier 9"),
    "sports": ("Fit Lab", "Court & Field"),
    "outdoor": ("Trailhead", "Summit Gear"),
    "travel": ("Wayfarer", "Jetset"),
    "home": ("Nest & Co", "Hearth"),
    "kids": ("Tiny Steps", "Playhouse"),
    "pets": ("Paws", "Happy Tails"),
    "health": ("CareWell", "Vital Clinic"),
    "pharmacy": ("Corner Pharmacy", "MedPlus"),
    "sexual-wellness": ("Intimate Co",),
    "religion": ("Faith Books",),
    "politics": ("Civic Press",),
    "debt-relief": ("ClearDebt",),
    "gambling": ("LuckyBet",),
}
# Where offers of a category may appear; unlisted categories appear in every context.
_CONTEXT_LIMITS = {
    "games": ("game", "entertainment", "shopping"),
    "health": ("health",),
    "pharmacy": ("health", "shopping"),
    "gambling": ("entertainment",),
}


def demo_offers(n: int = 2000, seed: int = 20260101) -> list[Offer]:
    """``n`` deterministic demo offers: ~20% local, ~6% in sensitive categories, a few expired
    or not yet valid, some restricted to particular contexts."""
    rng = random.Random(seed)
    names = DEMO_TAXONOMY.names
    open_cats = [c for c in names if not DEMO_TAXONOMY.is_sensitive(c)]
    sensitive = [c for c in names if DEMO_TAXONOMY.is_sensitive(c)]
    offers = []
    for i in range(n):
        pool = sensitive if rng.random() < 0.06 else open_cats
        primary = rng.choice(pool)
        cats = [primary]
        if rng.random() < 0.3:
            second = rng.choice(open_cats)
            if second != primary:
                cats.append(second)
        merchant = rng.choice(_MERCHANTS[primary])
        title = f"{rng.choice(_DEALS)} at {merchant}"
        location, radius = None, 0.0
        local_kind = primary in ("groceries", "coffee", "restaurants", "food-and-drink", "pharmacy")
        if (local_kind or rng.random() < 0.1) and rng.random() < 0.7:
            city = rng.choice(sorted(_CITIES))
            clat, clon = _CITIES[city]
            location = (
                round(clat + rng.uniform(-0.08, 0.08), 4),
                round(clon + rng.uniform(-0.12, 0.12), 4),
            )
            radius = float(rng.choice((2, 3, 5, 8, 15)))
            title += f" ({city})"
        valid_from, valid_until = float("-inf"), float("inf")
        r = rng.random()
        if r < 0.03:
            valid_until = DEMO_CREATED - 86400.0 * rng.randint(1, 30)  # expired
        elif r < 0.05:
            valid_from = datetime(2099, 1, 1, tzinfo=timezone.utc).timestamp()  # not yet valid
        offers.append(
            Offer(
                id=f"offer-{i:05d}",
                title=title,
                categories=tuple(cats),
                location=location,
                radius_km=radius,
                contexts=_CONTEXT_LIMITS.get(primary, ()),
                valid_from=valid_from,
                valid_until=valid_until,
                bias=round(rng.gauss(0.0, 0.05), 4),
            )
        )
    return offers


def demo_config(d: int = 32) -> BundleConfig:
    return BundleConfig(d=d, contexts=DEMO_CONTEXTS, regions=DEMO_REGIONS)


def _offer_json(o: Offer) -> dict[str, object]:
    item: dict[str, object] = {"id": o.id, "title": o.title, "categories": list(o.categories)}
    if o.location is not None:
        item.update(lat=o.location[0], lon=o.location[1], radius_km=o.radius_km)
    if o.contexts:
        item["contexts"] = list(o.contexts)
    if o.valid_from != float("-inf"):
        item["valid_from"] = o.valid_from
    if o.valid_until != float("inf"):
        item["valid_until"] = o.valid_until
    if o.bias:
        item["bias"] = o.bias
    return item


def _write_json(path: Path, data: object) -> None:
    path.write_text(
        json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def write_models(directory: str | Path) -> dict[str, Path]:
    """(Re)write the demo files into ``directory``; returns what was written.

    The demo key pair is created once and then reused, so the bundle bytes stay the same.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    key, pub = out / "demo-key.pem", out / "demo-key.pub.pem"
    if not key.exists():
        generate_keypair(key, pub)
    offers = demo_offers()
    config = demo_config()
    paths = {
        "taxonomy": out / "taxonomy.json",
        "contexts": out / "contexts.json",
        "catalog": out / "catalog.json",
        "bundle": out / "demo.bundle",
        "key": key,
        "public_key": pub,
    }
    _write_json(paths["taxonomy"], {"categories": DEMO_TAXONOMY.to_json()})
    _write_json(paths["contexts"], {"contexts": list(DEMO_CONTEXTS), "regions": list(DEMO_REGIONS)})
    _write_json(paths["catalog"], {"offers": [_offer_json(o) for o in offers]})
    catalog = Catalog.from_offers(offers, DEMO_TAXONOMY, DEMO_CONTEXTS, d=config.d)
    paths["bundle"].write_bytes(
        build_bundle(
            catalog=catalog,
            taxonomy=DEMO_TAXONOMY,
            config=config,
            version=1,
            created=DEMO_CREATED,
            expires=DEMO_EXPIRES,
            signing_key=key.read_bytes(),
        )
    )
    return paths
