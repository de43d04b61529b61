"""``make demo`` (``python -m tools.demo``): the whole story on embedded defaults.

An in-process aggregation server on SQLite (a real uvicorn on loopback); devices that keep
their history on the device, rank offers there, and send only randomised reports through the
real sync client; the server aggregating and publishing a signed bundle the devices verify and
load. MovieLens-100K is used when it can be fetched (movies as offers, each user a device);
otherwise the embedded demo catalog with a few synthetic personas. It ends with the quality
table: read from the last ``make eval`` run when there is one, else computed on a
small grid, and labelled as which.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

__all__ = ["main", "run"]

DAY = 86400.0
#: Cohort ids the embedded demo catalog's bundle reserves: its 17 open categories (round 0)
#: and room for the cohorts a round may split off.
DEMO_COHORT_SLOTS = 24
#: The reasons that come from learned cohorts (explanations.py).
COHORT_REASONS = (
    "Popular with people whose taste is like yours",
    "Similar to offers you engaged with",
)


@dataclass
class _Device:
    name: str
    engine: object  # Engine; typed loosely to keep this module's imports light


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _movielens_world(root: Path, n_devices: int):  # type: ignore[no-untyped-def]
    """(base bundle, key, public key, histories, attributes, context, start time) from
    MovieLens, or None when it cannot be fetched."""
    from localrank.bundle import build_bundle, generate_keypair
    from localrank.errors import DataUnavailableError
    from localrank.server.cohorts import round_zero
    from tools.evaluation.movie_catalog import (
        CONTEXT,
        age_band,
        movielens_catalog,
        movielens_config,
        movielens_taxonomy,
        offer_id,
        region_of_user,
    )
    from tools.evaluation.split import temporal_split
    from tools.movielens import load_movielens_100k

    try:
        data = load_movielens_100k()
    except DataUnavailableError:
        return None
    split = temporal_split(data)
    key, pub = root / "server-key.pem", root / "server-key.pub.pem"
    generate_keypair(key, pub)
    catalog, taxonomy = movielens_catalog(data, 32), movielens_taxonomy()
    config = movielens_config(32)
    base = build_bundle(
        catalog=catalog,
        taxonomy=taxonomy,
        config=config,
        # round 0 of the learned interest cohorts (one per genre): the devices fold themselves
        # into its factors, and the server learns the next rounds from their reports
        cohorts=round_zero(catalog, taxonomy, config),
        version=1,
        created=float(data.ratings.timestamp.min()) - DAY,
        expires=float(data.ratings.timestamp.max()) + 400 * DAY,
        signing_key=key.read_bytes(),
    )
    histories: dict[int, list[tuple[str, float]]] = {}
    for r in split.train.tolist():
        u = int(split.user[r])
        if u < n_devices:
            histories.setdefault(u, []).append(
                (offer_id(int(split.item[r])), float(split.timestamp[r]))
            )
    # Every history is moved in time to end the day before the demo starts (the gaps between a
    # user's ratings are kept), so that no device's events have passed the 90-day retention.
    start = max(t for h in histories.values() for _, t in h) + DAY
    for u, h in histories.items():
        shift = (start - DAY / 2) - max(t for _, t in h)
        histories[u] = [(o, t + shift) for o, t in h]
    attrs = {
        u: {
            "age_band": age_band(int(data.users.age[u])),
            "occupation": data.users.occupation[u],
            "region": region_of_user(data.users.zip_code[u]),
        }
        for u in histories
    }
    names = {u: f"MovieLens user {u + 1}" for u in histories}
    return base, key, pub, histories, attrs, CONTEXT, start, names, "MovieLens-100K"


def _demo_world(root: Path, n_devices: int):  # type: ignore[no-untyped-def]
    """The embedded demo catalog with synthetic personas (no network needed)."""
    from dataclasses import replace

    from localrank.bundle import build_bundle
    from localrank.server.cohorts import round_zero
    from localrank.shared.catalog import Catalog
    from tools.demo_catalog import (
        DEMO_CONTEXTS,
        DEMO_CREATED,
        DEMO_EXPIRES,
        DEMO_TAXONOMY,
        demo_config,
        demo_offers,
        write_models,
    )

    paths = write_models(root / "models")
    # offers a persona can buy in the demo's context: every game offer is limited to some
    # contexts, so 'no contexts' alone left the electronics & games persona without any
    offers = [
        o
        for o in demo_offers()
        if (not o.contexts or "shopping" in o.contexts) and o.location is None
    ]
    by_cat: dict[str, list[str]] = {}
    for o in offers:
        by_cat.setdefault(o.categories[0], []).append(o.id)
    tastes = [
        ("sci-fi", "books"),
        ("coffee", "restaurants"),
        ("outdoor", "sports"),
        ("music", "movies"),
        ("electronics", "games"),
        ("fashion", "travel"),
    ]
    rng = random.Random(7)
    histories: dict[int, list[tuple[str, float]]] = {}
    t_end = DEMO_CREATED + 200 * DAY
    for u in range(n_devices):
        likes = tastes[u % len(tastes)]
        events = []
        for _ in range(rng.randint(8, 20)):
            cat = likes[0] if rng.random() < 0.6 else likes[1]
            events.append((rng.choice(by_cat[cat]), t_end - rng.uniform(1, 40) * DAY))
        histories[u] = sorted(events, key=lambda e: e[1])
    attrs = {u: {"age_band": "25-34", "occupation": "other", "region": None} for u in histories}
    names = {u: f"persona {u + 1} ({' & '.join(tastes[u % len(tastes)])})" for u in histories}
    # models/demo.bundle has no cohorts; the demo's base bundle carries round 0 (one cohort
    # per open category), so the devices fold themselves into its factors
    config = replace(demo_config(), cohort_slots=DEMO_COHORT_SLOTS)
    catalog = Catalog.from_offers(demo_offers(), DEMO_TAXONOMY, DEMO_CONTEXTS, d=config.d)
    base = build_bundle(
        catalog=catalog,
        taxonomy=DEMO_TAXONOMY,
        config=config,
        cohorts=round_zero(catalog, DEMO_TAXONOMY, config),
        version=1,
        created=DEMO_CREATED,
        expires=DEMO_EXPIRES,
        signing_key=paths["key"].read_bytes(),
    )
    return (
        base,
        paths["key"],
        paths["public_key"],
        histories,
        attrs,
        "shopping",
        t_end + DAY,
        names,
        "the embedded demo catalog",
    )


def run(
    console: Console | None = None,
    *,
    devices: int = 40,
    k: int = 5,
    days: int = 7,
    eval_dir: str | Path = "eval-results",
    quality: bool = True,
    world: str = "auto",
) -> dict[str, object]:
    """Run the story; returns a summary (for tests). ``quality=False`` leaves out the quality
    table; ``world`` is ``auto`` (MovieLens when it can be fetched), ``movielens`` or
    ``embedded``."""
    if world not in ("auto", "movielens", "embedded"):
        raise ValueError(f"world: expected 'auto', 'movielens' or 'embedded', got {world!r}")
    from localrank.device.engine import Engine
    from localrank.device.sync import SyncClient
    from localrank.server.app import create_app
    from localrank.server.background import BackgroundServer
    from localrank.server.config import ServerConfig
    from localrank.shared.clock import FixedClock

    console = console or Console()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="localrank-demo-") as tmp:
        root = Path(tmp)
        made = None if world == "embedded" else _movielens_world(root, devices)
        if made is None and world == "movielens":
            raise RuntimeError("world: MovieLens-100K is unavailable")
        made = made or _demo_world(root, devices)
        base, key, pub, histories, attrs, context, start, names, source = made
        console.rule(f"[bold]localrank demo[/] · {len(histories)} devices · {source}")
        # One clock for the server and every device: first at the end of the histories (events
        # are recorded in the past), then moving day by day.
        clock = FixedClock(max(t for h in histories.values() for _, t in h))
        config = ServerConfig(
            db=f"sqlite:///{root / 'server.db'}",
            key=key,
            base_bundle=base,
            clock=clock,
            aggregate_every=None,
        )
        app = create_app(config)
        fleet: list[_Device] = []
        for u, events in histories.items():
            engine = Engine.open(
                root / f"device-{u}.db",
                public_key=pub,
                bundle=base,
                clock=clock,
            )
            engine.update_settings(reporting=True, quiet_hours=None)
            engine.set_attributes(**{k2: v for k2, v in attrs[u].items() if v is not None})
            for offer, t in events:
                engine.record("purchase", context=context, offer=offer, now=t)
            fleet.append(_Device(names[u], engine))
        console.print(
            f"Recorded {sum(len(h) for h in histories.values()):,} events on "
            f"{len(fleet)} devices; none of them leaves a device."
        )
        with BackgroundServer(app) as server:
            state = app.state.localrank
            sent = 0
            for day in range(days):
                clock.set(start + day * DAY + 12 * 3600)
                for d in fleet:
                    with SyncClient(d.engine, server.url) as sync:  # type: ignore[arg-type]
                        _, flushed = sync.sync()
                        sent += flushed.stored + flushed.already_stored
                state.aggregator.run(now=clock.now(), force_publish=True)
            clock.set(start + days * DAY + 12 * 3600)
            for d in fleet:
                with SyncClient(d.engine, server.url) as sync:  # type: ignore[arg-type]
                    sync.fetch_bundle()
            bundle = state.bundle(fresh=True)[0]
        console.print(
            f"{days} simulated days: the devices sent {sent:,} randomised reports over HTTP to "
            f"{server.url}; the server folded them into noised sums and published bundle "
            f"v{bundle.version} (embeddings: {bundle.config.embedding_version}), which every "
            "device verified (Ed25519) and loaded."
        )
        explanations = _show_recommendations(console, fleet[:3], context, k)
        cohort_reasons = sum(
            any(r.lower() in e.lower() for r in COHORT_REASONS) for e in explanations
        )
        n_cohorts = 0 if bundle.cohorts is None else int(bundle.cohorts.ids.size)
        console.print(
            f"{cohort_reasons} of these {len(explanations)} recommendations give a cohort reason: "
            f"each device folds its own history into the bundle's factors and joins the nearest "
            f"of its {n_cohorts} interest cohorts, on the device (a cohort's prior ranks only "
            f"once the census has measured at least {bundle.config.min_population} devices in it)."
        )
        _show_outbox(console, fleet[0])
        _show_ledger(console, fleet[0])
        for d in fleet:
            d.engine.close()  # type: ignore[attr-defined]
    quality_source = _show_quality(console, Path(eval_dir)) if quality else "skipped"
    elapsed = time.perf_counter() - t0
    console.print(f"[dim]demo finished in {elapsed:.0f} s[/]")
    return {
        "devices": len(fleet),
        "reports": sent,
        "bundle_version": bundle.version,
        "embeddings": bundle.config.embedding_version,
        "cohorts": 0 if bundle.cohorts is None else int(bundle.cohorts.ids.size),
        "explanations": explanations,
        "source": source,
        "quality": quality_source,
        "seconds": elapsed,
    }


def _show_recommendations(
    console: Console, devices: list[_Device], context: str, k: int
) -> list[str]:
    """Print each device's top ``k``; returns every explanation shown."""
    shown: list[str] = []
    for d in devices:
        recs = d.engine.recommend(context, k=k)  # type: ignore[attr-defined]
        table = Table(title=f"{d.name}: top {k} in the {context!r} context", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("offer")
        table.add_column("score", justify="right")
        table.add_column("why (shown to the user)")
        for i, r in enumerate(recs, 1):
            table.add_row(str(i), r.title, f"{r.score:.3f}", r.explanation)
            shown.append(r.explanation)
        console.print(table)
    return shown


def _show_outbox(console: Console, d: _Device) -> None:
    sent = d.engine.outbox()  # type: ignore[attr-defined]
    table = Table(
        title=f"What left {d.name} (every report, as logged on the device)", title_justify="left"
    )
    for col in ("sent (UTC)", "to", "kind", "epoch", "bytes", "ε"):
        table.add_column(col)
    for r in sent[:12]:
        table.add_row(
            _iso(r.sent_at), r.destination, r.kind, str(r.epoch), str(r.bytes), f"{r.epsilon:g}"
        )
    if len(sent) > 12:
        table.add_row("…", f"{len(sent) - 12} more", "", "", "", "")
    console.print(table)
    if sent:
        example = {
            k: (v[:24] + "…" if isinstance(v, str) and len(v) > 28 else v)
            for k, v in sent[0].payload.items()
        }
        console.print("One report, as sent:", json.dumps(example, sort_keys=True))


def _show_ledger(console: Console, d: _Device) -> None:
    ledger = d.engine.privacy_ledger()  # type: ignore[attr-defined]
    table = Table(title=f"{d.name}: privacy ledger", title_justify="left")
    for col in ("when (UTC)", "kind", "ε", "why"):
        table.add_column(col)
    for e in ledger[:10]:
        table.add_row(_iso(e.t), e.kind, f"{e.epsilon:g}", e.note)
    spent = sum(e.epsilon for e in ledger if e.kind == "report")
    console.print(table)
    console.print(f"ε spent on reports: {spent:g}; budgets: 8 a day, 64 per 30 days.")


def _show_quality(console: Console, eval_dir: Path) -> str:
    table = eval_dir / "evaluation.md"
    if table.exists():
        made = json.loads((eval_dir / "evaluation.json").read_text()).get("created", "?")
        console.rule(f"Quality: read from the last `make eval` run ({made})")
        console.print(Markdown(table.read_text()))
        return "last evaluate run"
    from localrank.errors import DataUnavailableError
    from tools.evaluation.grid import Cell
    from tools.evaluation.run import EvaluationSettings, evaluate

    console.rule("Quality: computed now on a small grid (120 devices, one cell, 14 days)")
    settings = EvaluationSettings(
        cells=(Cell("central", None, 20),),
        tuning_budget=2,
        cap_days=14,
        user_fraction=120 / 943,
        device_fractions=(),
        workers=1,
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            evaluate(settings, Path(tmp))
            console.print(Markdown((Path(tmp) / "evaluation.md").read_text()))
    except DataUnavailableError as e:
        console.print(f"[yellow]MovieLens is unavailable, so no quality table: {e}[/]")
        return "unavailable"
    return "small grid"


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.demo [-k K]`` (``make demo``)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tools.demo", description="rank offers on the embedded demo defaults"
    )
    parser.add_argument("-k", type=int, default=10, help="how many offers to show (default 10)")
    args = parser.parse_args(argv)
    run(k=args.k)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
