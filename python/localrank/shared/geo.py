"""Places, coarsely: rounding, distance, and the 3-character geohash that is a segment's region.

A stored location is rounded to 0.01° (about 1 km). The only place-related value a segment can
hold is a *region*: the 3-character geohash of a location (cells of about 156 km × 156 km) or a
postal region (the first digit of a US ZIP code, ``zip-9``).
"""

from __future__ import annotations

import math

from localrank.errors import InputError

__all__ = [
    "EARTH_RADIUS_KM",
    "Location",
    "distance_km",
    "geohash",
    "region_of",
    "round_location",
    "validate_location",
    "zip_region",
]

EARTH_RADIUS_KM = 6371.0088
_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"

Location = tuple[float, float]


def validate_location(location: object, arg: str = "location") -> Location:
    """A ``(lat, lon)`` pair of finite degrees in range, or an InputError naming ``arg``."""
    if (
        not isinstance(location, (tuple, list))
        or len(location) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in location)
    ):
        raise InputError(f"{arg}: expected a (lat, lon) pair of numbers, got {location!r}")
    lat, lon = float(location[0]), float(location[1])
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise InputError(f"{arg}: expected latitude in [-90, 90], got {lat!r}")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise InputError(f"{arg}: expected longitude in [-180, 180], got {lon!r}")
    return lat, lon


def round_location(location: Location) -> Location:
    """Round to 0.01° (≈1.1 km of latitude): what the device stores."""
    return round(location[0], 2), round(location[1], 2)


def distance_km(a: Location, b: Location) -> float:
    """Great-circle distance (haversine)."""
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (
        math.sin((la2 - la1) / 2) ** 2
        + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def geohash(location: Location, precision: int = 3) -> str:
    """The standard geohash of ``location`` with ``precision`` characters."""
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    out: list[str] = []
    bits, ch, even = 0, 0, True
    lat, lon = location
    while len(out) < precision:
        if even:
            mid = (lon_lo + lon_hi) / 2
            ch = ch * 2 + (lon >= mid)
            lon_lo, lon_hi = (mid, lon_hi) if lon >= mid else (lon_lo, mid)
        else:
            mid = (lat_lo + lat_hi) / 2
            ch = ch * 2 + (lat >= mid)
            lat_lo, lat_hi = (mid, lat_hi) if lat >= mid else (lat_lo, mid)
        even = not even
        bits += 1
        if bits == 5:
            out.append(_BASE32[ch])
            bits, ch = 0, 0
    return "".join(out)


def region_of(location: Location) -> str:
    """The segment region of a location: ``gh-`` plus its 3-character geohash."""
    return "gh-" + geohash(location, 3)


def zip_region(zip_code: str) -> str | None:
    """The segment region of a US ZIP code: ``zip-`` plus its first digit (None if not a ZIP)."""
    z = zip_code.strip()
    return f"zip-{z[0]}" if z[:1].isdigit() else None
