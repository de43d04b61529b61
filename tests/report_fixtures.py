"""Bundles and engines for the report tests: the demo catalog under configurable settings."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

from tools.demo_catalog import (
    DEMO_CREATED,
    DEMO_EXPIRES,
    DEMO_TAXONOMY,
    demo_config,
    demo_offers,
)

from localrank.bundle import BundleConfig, build_bundle, generate_keypair
from localrank.device.engine import Engine
from localrank.shared.catalog import Catalog
from localrank.shared.clock import FixedClock

T0 = 1_790_000_000.0  # a Tuesday, 2026-09-21 ~14:13 UTC
#: Central mode under the continual release: its 30-day guarantee includes the LDP census, so
#: the census is small and monthly (the weekly ε = 2 census alone would spend it 400 times).
CENTRAL: dict[str, Any] = {"mode": "central", "epsilon": 0.1, "census_interval_days": 30}


@cache
def demo_catalog(d: int) -> Catalog:
    cfg = demo_config(d)
    return Catalog.from_offers(demo_offers(), DEMO_TAXONOMY, cfg.contexts, d=d)


def make_bundle(directory: Path, version: int = 1, **config: Any) -> tuple[bytes, Path]:
    """A signed bundle of the demo catalog with config overrides; returns (bytes, public key)."""
    key, pub = directory / "key.pem", directory / "key.pub.pem"
    if not key.exists():
        generate_keypair(key, pub)
    cfg: BundleConfig = replace(demo_config(), **config)
    data = build_bundle(
        catalog=demo_catalog(cfg.d),
        taxonomy=DEMO_TAXONOMY,
        config=cfg,
        version=version,
        created=DEMO_CREATED,
        expires=DEMO_EXPIRES,
        signing_key=key.read_bytes(),
    )
    return data, pub


def open_engine(
    directory: Path,
    name: str = "device.db",
    *,
    clock: FixedClock | None = None,
    reporting: bool = True,
    **config: Any,
) -> tuple[Engine, FixedClock]:
    data, pub = make_bundle(directory, **config)
    clock = clock or FixedClock(T0)
    engine = Engine.open(directory / name, public_key=pub, bundle=data, clock=clock)
    engine.update_settings(quiet_hours=None, reporting=reporting)
    return engine, clock


def plain_offers(engine: Engine, n: int) -> list[str]:
    """``n`` non-sensitive, currently valid offers available in every context."""
    cat = engine.bundle.catalog
    out = []
    for i in range(len(cat)):
        if (
            not cat.sensitive[i]
            and cat.valid_until[i] > T0 + 400 * 86400
            and cat.valid_from[i] < T0
        ):
            out.append(cat.ids[i])
        if len(out) == n:
            break
    return out


def sensitive_offers(engine: Engine, n: int) -> list[str]:
    cat = engine.bundle.catalog
    return [cat.ids[i] for i in range(len(cat)) if cat.sensitive[i]][:n]
