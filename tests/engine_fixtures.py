"""A small purpose-built world for the engine tests: taxonomy, catalog, signed bundles, engines.

Everything is deterministic. The catalog is tiny (a few dozen offers, d = 16) so a test can
ask for every eligible offer at once (``k = ALL``) and reason about each one:

- four ordinary offers per non-sensitive category (``o-<category>-<i>``);
- two local offers: a café in London and a grocer in Paris (5 km radius each);
- sensitive offers with a high bias, so that they would top any ranking they were eligible for:
  ``o-health-1``/``o-health-2`` (health), ``o-pharmacy-1`` (pharmacy *and* groceries) and
  ``o-gambling-1`` (gambling);
- ``o-game-only``, limited to the game context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tools.demo_catalog import DEMO_CONTEXTS

from localrank.bundle import BundleConfig, build_bundle, generate_keypair
from localrank.device.engine import Engine, Recommendation, Tuning
from localrank.shared.catalog import Catalog, Offer
from localrank.shared.clock import FixedClock
from localrank.shared.geo import region_of
from localrank.shared.segments import build_segments
from localrank.shared.taxonomy import Category, Taxonomy

DAY = 86400.0
HOUR = 3600.0
MINUTE = 60.0
#: Monday 2 March 2026, 12:00 UTC: far from the default quiet hours in UTC.
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc).timestamp()
ALL = 1000  # k large enough to return every eligible offer

LONDON = (51.5074, -0.1278)
PARIS = (48.8566, 2.3522)
CONTEXTS = DEMO_CONTEXTS
REGIONS = (region_of(LONDON), region_of(PARIS))

TAXONOMY = Taxonomy(
    (
        Category("groceries", label="Groceries"),
        Category("coffee", label="Coffee"),
        Category("books", label="Books"),
        Category("sci-fi", label="Sci-Fi", parent="books"),
        Category("games", label="Games"),
        Category("music", label="Music"),
        Category("health", label="Health", sensitive=True),
        Category("pharmacy", label="Pharmacy", parent="health", sensitive=True),
        Category("gambling", label="Gambling", sensitive=True),
    )
)
OPEN_CATEGORIES = TAXONOMY.non_sensitive


def offers() -> list[Offer]:
    out: list[Offer] = []
    for ci, c in enumerate(OPEN_CATEGORIES):
        for i in range(4):
            out.append(
                Offer(
                    id=f"o-{c}-{i}",
                    title=f"Deal {i} on {TAXONOMY[TAXONOMY.index(c)].display}",
                    categories=(c,),
                    bias=round(0.01 * ((ci * 4 + i) % 7), 4),
                )
            )
    out += [
        Offer(
            "o-local-cafe", "Flat white at Soho Corner Cafe", ("coffee",), LONDON, 5.0, bias=0.05
        ),
        Offer(
            "o-local-paris", "Baguette at Rue Cler Grocer", ("groceries",), PARIS, 5.0, bias=0.05
        ),
        Offer("o-health-1", "Vitamin bundle", ("health",), bias=0.5),
        Offer("o-health-2", "Clinic check-up", ("health",), bias=0.5),
        Offer("o-pharmacy-1", "Pharmacy and groceries", ("pharmacy", "groceries"), bias=0.5),
        Offer("o-gambling-1", "Free spins", ("gambling",), bias=0.5),
        Offer("o-game-only", "Bonus level", ("games",), contexts=("game",), bias=0.02),
    ]
    return out


def config(**overrides: Any) -> BundleConfig:
    return replace(BundleConfig(d=16, contexts=CONTEXTS, regions=REGIONS), **overrides)


def catalog(d: int = 16, embeddings: np.ndarray | None = None) -> Catalog:
    return Catalog.from_offers(offers(), TAXONOMY, CONTEXTS, d=d, embeddings=embeddings)


def n_segments(taxonomy: Taxonomy = TAXONOMY, depth: int = 3) -> int:
    return len(build_segments(taxonomy, REGIONS, depth))


def published_priors(seed: int = 7, taxonomy: Taxonomy = TAXONOMY) -> dict[str, np.ndarray]:
    """Every segment published (population 1000) with its own, clearly different prior, so
    that which segment is active visibly changes the ranking."""
    rng = np.random.default_rng(seed)
    s = n_segments(taxonomy)
    return {
        "populations": np.full(s, 1000, dtype=np.int64),
        "priors": rng.uniform(0.0, 1.0, (s, len(taxonomy))).astype(np.float32),
    }


class Keys:
    """A signing key pair in a directory."""

    def __init__(self, directory: Path, name: str = "server") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.private = directory / f"{name}.pem"
        self.public = directory / f"{name}.pub.pem"
        generate_keypair(self.private, self.public)

    def bundle(
        self,
        version: int = 1,
        *,
        created: float = T0 - 30 * DAY,
        expires: float = T0 + 365 * DAY,
        taxonomy: Taxonomy = TAXONOMY,
        offer_list: Sequence[Offer] | None = None,
        embeddings: np.ndarray | None = None,
        populations: np.ndarray | None = None,
        priors: np.ndarray | None = None,
        **config_overrides: Any,
    ) -> bytes:
        cfg = config(**config_overrides)
        cat = Catalog.from_offers(
            list(offer_list) if offer_list is not None else offers(),
            taxonomy,
            cfg.contexts,
            d=cfg.d,
            embeddings=embeddings,
        )
        return build_bundle(
            catalog=cat,
            taxonomy=taxonomy,
            config=cfg,
            version=version,
            created=created,
            expires=expires,
            signing_key=self.private.read_bytes(),
            populations=populations,
            priors=priors,
        )


def open_engine(
    path: Path,
    keys: Keys,
    bundle: bytes | None,
    *,
    clock: FixedClock | None = None,
    tuning: Tuning | None = None,
    quiet: bool = False,
) -> tuple[Engine, FixedClock]:
    """An engine on ``path`` at ``T0``; quiet hours off unless ``quiet``."""
    clock = clock or FixedClock(T0)
    engine = Engine.open(path, public_key=keys.public, bundle=bundle, clock=clock, tuning=tuning)
    if not quiet:
        engine.update_settings(quiet_hours=None)
    return engine, clock


def ids(recs: Sequence[Recommendation]) -> list[str]:
    return [r.offer_id for r in recs]


def same_ranking(a: Sequence[Recommendation], b: Sequence[Recommendation]) -> bool:
    """Same offers in the same order, same scores (to float tolerance), same reasons."""
    if ids(a) != ids(b):
        return False
    for x, y in zip(a, b, strict=True):
        if not math.isclose(x.score, y.score, rel_tol=1e-5, abs_tol=1e-6):
            return False
        if [k for k, _ in x.reasons] != [k for k, _ in y.reasons]:
            return False
        if not all(
            math.isclose(wx, wy, rel_tol=1e-5, abs_tol=1e-6)
            for (_, wx), (_, wy) in zip(x.reasons, y.reasons, strict=True)
        ):
            return False
        if x.explanation != y.explanation:
            return False
    return True
