"""The per-offer guardrails: the eligibility mask and the ``adjust`` term.

This is the one definition the engine uses and the exported ONNX model reproduces, term by
term, in float32:

eligible[i] = valid[i] ∧ in_context[i] ∧ sensitive_ok[i] ∧ under_cap[i] ∧ geo_ok[i]

- valid: ``valid_from ≤ now < valid_until``.
- in_context: bit ``context_id`` of the offer's context mask.
- sensitive_ok: the offer has no sensitive category the user has not opted in to; at level
  ``off`` every offer passes (nothing is personalised there).
- under_cap: ``fatigue[i] < offer_cap``, where fatigue is the offer's impressions in the last
  24 h plus ``offer_cap`` for a dismiss in the last 7 days or a purchase still on the device
  (within the 90-day retention).
- geo_ok: a local offer needs location allowed in this context *and* granted, and
  ``dist²[i] ≤ radius²[i]``; other offers always pass.

adjust[i] = NEAR·(1 − dist²/radius²) for eligible local offers − FATIGUE·fatigue[i]
           + CONTEXT_FIT if the offer is meant for only some contexts, this one among them.

Distances are equirectangular in float32: ``dy = Δlat·K``, ``dx = Δlon·K·cos(lat_offer)``,
``K = π/180·6371 km``; ``cos(lat_offer)`` is computed once per offer. Squared distances avoid
a square root, so the model and the engine compare exactly the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from localrank.bundle import Bundle
from localrank.shared.geo import EARTH_RADIUS_KM

__all__ = [
    "CONTEXT_FIT",
    "FATIGUE",
    "KM_PER_DEGREE",
    "NEAR",
    "Guardrails",
    "OfferGeometry",
    "adjust_term",
    "eligibility",
]

NEAR = np.float32(0.5)
FATIGUE = np.float32(0.2)
CONTEXT_FIT = np.float32(0.1)
KM_PER_DEGREE = np.float32(math.pi / 180 * EARTH_RADIUS_KM)


@dataclass(frozen=True)
class OfferGeometry:
    """Per-offer constants both the engine and the ONNX model use."""

    local: np.ndarray  # bool[n]
    lat: np.ndarray  # float32[n] (0 where not local)
    lon: np.ndarray  # float32[n]
    cos_lat: np.ndarray  # float32[n]
    radius2: np.ndarray  # float32[n]: radius_km², 0 where not local
    sensitive_cats: np.ndarray  # float32[n, C]: 1 where the offer has a sensitive category
    targeted: np.ndarray  # bool[n]: limited to some contexts

    @classmethod
    def of(cls, bundle: Bundle) -> OfferGeometry:
        """The geometry of a bundle's catalog (computed once per bundle digest)."""
        cached = _GEOMETRY.get(bundle.digest)
        if cached is None:
            cached = _GEOMETRY[bundle.digest] = cls._compute(bundle)
            while len(_GEOMETRY) > 8:
                del _GEOMETRY[next(iter(_GEOMETRY))]
        return cached

    @classmethod
    def _compute(cls, bundle: Bundle) -> OfferGeometry:
        cat = bundle.catalog
        n, C = len(cat), len(bundle.taxonomy)
        local = cat.local
        lat = np.where(local, cat.lat, 0).astype(np.float32)
        lon = np.where(local, cat.lon, 0).astype(np.float32)
        sens = np.zeros((n, C), dtype=np.float32)
        sensitive_ids = bundle.taxonomy.sensitive_mask
        for i in range(n):
            for c in cat.categories_of(i):
                if sensitive_ids[c]:
                    sens[i, c] = 1.0
        all_contexts = (1 << len(bundle.config.contexts)) - 1
        return cls(
            local=local,
            lat=lat,
            lon=lon,
            cos_lat=np.cos(np.radians(lat.astype(np.float64))).astype(np.float32),
            radius2=np.where(local, cat.radius_km.astype(np.float32) ** 2, 0).astype(np.float32),
            sensitive_cats=sens,
            targeted=(cat.contexts.astype(np.int64) & all_contexts) != all_contexts,
        )

    def dist2(self, location: tuple[float, float]) -> np.ndarray:
        """float32[n] squared distances (km²) from ``location`` to every offer."""
        la, lo = np.float32(location[0]), np.float32(location[1])
        dy = (la - self.lat) * KM_PER_DEGREE
        dx = ((lo - self.lon) * KM_PER_DEGREE) * self.cos_lat
        d2: np.ndarray = dy * dy + dx * dx
        return d2


_GEOMETRY: dict[str, OfferGeometry] = {}


@dataclass(frozen=True)
class Guardrails:
    """Everything the mask and adjust depend on for one request."""

    now: float
    context_id: int
    level_off: bool
    opt_ins: np.ndarray  # float32[C]: 1 where the user opted in to a sensitive category
    fatigue: np.ndarray  # float32[n]
    offer_cap: int
    location_allowed: bool
    location: tuple[float, float] | None  # granted and passed by the app


def eligibility(bundle: Bundle, geo: OfferGeometry, g: Guardrails) -> np.ndarray:
    """bool[n]: which offers may be ranked at all."""
    cat = bundle.catalog
    valid = (cat.valid_from <= g.now) & (g.now < cat.valid_until)
    in_context = ((cat.contexts.astype(np.int64) >> g.context_id) & 1).astype(bool)
    if g.level_off:
        sensitive_ok = np.ones(len(cat), dtype=bool)
    else:
        sensitive_ok = (geo.sensitive_cats @ (np.float32(1) - g.opt_ins)) == 0
    under_cap = g.fatigue < np.float32(g.offer_cap)
    if g.location_allowed and g.location is not None:
        geo_ok = ~geo.local | (geo.dist2(g.location) <= geo.radius2)
    else:
        geo_ok = ~geo.local
    eligible: np.ndarray = valid & in_context & sensitive_ok & under_cap & geo_ok
    return eligible


def adjust_term(geo: OfferGeometry, g: Guardrails) -> np.ndarray:
    """float32[n]: distance decay, fatigue and context fit."""
    adjust = -FATIGUE * g.fatigue.astype(np.float32)
    if g.location_allowed and g.location is not None:
        d2 = geo.dist2(g.location)
        near = geo.local & (d2 <= geo.radius2)
        safe_r2 = np.where(geo.radius2 > 0, geo.radius2, np.float32(1))
        adjust = adjust + np.where(near, NEAR * (np.float32(1) - d2 / safe_r2), np.float32(0))
    adjust = adjust + np.where(geo.targeted, CONTEXT_FIT, np.float32(0))
    out: np.ndarray = adjust.astype(np.float32)
    return out
