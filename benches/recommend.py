"""``Engine.recommend`` from start to end: a 10k-offer catalog and 10k stored events.

    python -m benches.recommend [--offers 10000] [--events 10000] [--calls 300]

Prints the median and percentiles of a full ``recommend()`` call and the kernel's share (the
same ``score_topk`` call on the same inputs, timed alone), and writes JSON beside the other
bench results. The issue's guide on this machine: a median of at most 2 ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from benches.machine import describe
from rich.console import Console
from tools.demo_catalog import DEMO_CONTEXTS, DEMO_TAXONOMY, demo_offers

import localrank
from localrank.bundle import BundleConfig, build_bundle, generate_keypair
from localrank.device.engine import Engine
from localrank.shared.catalog import Catalog
from localrank.shared.clock import FixedClock
from localrank.shared.geo import region_of

T0 = 1_790_000_000.0


def build(directory: Path, n_offers: int, n_events: int, d: int) -> tuple[Engine, FixedClock]:
    key, pub = directory / "k.pem", directory / "k.pub.pem"
    generate_keypair(key, pub)
    offers = demo_offers(n_offers, seed=7)
    regions = tuple(sorted({region_of(o.location) for o in offers if o.location}))
    config = BundleConfig(d=d, contexts=DEMO_CONTEXTS, regions=regions[:8])
    catalog = Catalog.from_offers(offers, DEMO_TAXONOMY, DEMO_CONTEXTS, d=d)
    data = build_bundle(catalog=catalog, taxonomy=DEMO_TAXONOMY, config=config, version=1,
                        created=T0 - 86400, expires=T0 + 365 * 86400,
                        signing_key=key.read_bytes())
    clock = FixedClock(T0)
    engine = Engine.open(directory / "device.db", public_key=pub, bundle=data, clock=clock)
    engine.update_settings(quiet_hours=None, daily_cap=10**6, offer_cap=10**6)
    rng = np.random.default_rng(1)
    ids = [o for o, off in zip(catalog.ids, offers, strict=True) if not off.contexts]
    kinds = ["view", "click", "purchase", "impression", "visit", "app_use"]
    for j in range(n_events):
        kind = kinds[rng.integers(len(kinds))]
        t = T0 - float(rng.uniform(3600, 80 * 86400))
        kw: dict = {"context": "shopping", "now": t}
        if kind == "visit":
            kw["location"] = (51.5 + rng.normal(0, 0.05), -0.12 + rng.normal(0, 0.05))
        elif kind == "app_use":
            kw["category"] = "games"
        else:
            kw["offer"] = ids[int(rng.integers(len(ids)))]
        engine.record(kind, **kw)
        if j % 1000 == 0:
            clock.set(T0)
    return engine, clock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--offers", type=int, default=10_000)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("benches/results/recommend.json"))
    args = p.parse_args(argv)
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as tmp:
        engine, _ = build(Path(tmp), args.offers, args.events, args.d)
        where = (51.51, -0.13)
        for _ in range(5):
            engine.recommend("shopping", k=10, location=where)
        full, kernel = [], []
        cat = engine.bundle.catalog
        for _ in range(args.calls):
            t0 = time.perf_counter()
            engine.recommend("shopping", k=10, location=where)
            full.append(time.perf_counter() - t0)
            x = engine.scoring_inputs("shopping", location=where)
            t0 = time.perf_counter()
            localrank.score_topk(x.u, cat.embeddings, cat.bias, cat.category, x.prior, x.eligible,
                                 w_dot=x.w_dot, w_prior=x.w_prior, adjust=x.adjust, k=10)
            kernel.append(time.perf_counter() - t0)
        engine.close()
    med, ker = statistics.median(full) * 1e3, statistics.median(kernel) * 1e3
    p90 = float(np.percentile(full, 90)) * 1e3
    console.print(
        f"recommend(): {args.offers:,} offers, {args.events:,} events — median {med:.2f} ms, "
        f"p90 {p90:.2f} ms; kernel {ker:.3f} ms ({ker / med:.1%} of the call)"
    )
    result = {
        "machine": describe(),
        "python": platform.python_version(),
        "offers": args.offers,
        "events": args.events,
        "calls": args.calls,
        "median_ms": med,
        "p90_ms": p90,
        "kernel_median_ms": ker,
        "kernel_share": ker / med,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
