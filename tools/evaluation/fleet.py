"""A fleet of simulated devices: one real ``Engine`` with its own SQLite store per user.

Everything goes through the product's code paths: ratings are recorded as purchases, reports
come from ``Engine.take_batch`` under the bundle's L and budgets, bundles are verified and
loaded by each engine, and rankings come from ``Engine.recommend``.

The training events are recorded once into template stores (:func:`build_fleet`); each grid
cell works on copies, so cells share the events and the profiles and differ only in what
depends on ε and the mode.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from localrank.bundle import open_bundle
from localrank.device.engine import Engine, Tuning
from localrank.device.reports import LedgerEntry
from localrank.errors import BundleError
from localrank.shared.clock import SECONDS_PER_DAY, FixedClock
from tools.evaluation.movie_catalog import CONTEXT, age_band, offer_id, region_of_user
from tools.evaluation.split import Split
from tools.movielens import MovieLens100K

__all__ = [
    "Device",
    "Fleet",
    "ReportRun",
    "ReportServer",
    "build_fleet",
    "recommend_all",
    "run_reports",
]

#: The privacy budget's window (30 days).
WINDOW_S = 30 * SECONDS_PER_DAY
#: How long after a device's last training event it ranks: past the 30-minute cool-down.
AFTER_LAST_EVENT_S = 31 * 60


@dataclass(frozen=True)
class Device:
    user: int
    path: Path
    first_t: float
    last_t: float
    events: int


@dataclass(frozen=True)
class Fleet:
    directory: Path
    public_key: Path
    devices: tuple[Device, ...]

    def copy_to(self, directory: Path) -> Fleet:
        """The same devices in fresh copies of their stores."""
        directory.mkdir(parents=True, exist_ok=True)
        devices = []
        for d in self.devices:
            dest = directory / d.path.name
            shutil.copyfile(d.path, dest)
            devices.append(Device(d.user, dest, d.first_t, d.last_t, d.events))
        return Fleet(directory, self.public_key, tuple(devices))


class ReportServer(Protocol):
    """The server side the simulation talks to (the real ingest and aggregation)."""

    def submit(self, body: bytes, now: float) -> None: ...

    def publish(self, now: float) -> bytes: ...


def build_fleet(
    directory: Path,
    data: MovieLens100K,
    split: Split,
    users: Iterable[int],
    bundle: bytes,
    public_key: Path,
    progress: Callable[[], None] | None = None,
) -> Fleet:
    """Create one store per user holding its training ratings as purchases, with the
    reporting consent given and the on-device attributes set; every other setting is the
    product's default."""
    directory.mkdir(parents=True, exist_ok=True)
    rows_by_user: dict[int, list[int]] = {}
    for r in split.train.tolist():
        rows_by_user.setdefault(int(split.user[r]), []).append(r)
    devices = []
    for u in users:
        rows = sorted(rows_by_user.get(u, []), key=lambda r: (split.timestamp[r], split.item[r]))
        if not rows:
            continue
        times = [float(split.timestamp[r]) for r in rows]
        clock = FixedClock(times[-1])
        path = directory / f"user-{u + 1:04d}.db"
        engine = Engine.open(path, public_key=public_key, bundle=bundle, clock=clock)
        engine.update_settings(reporting=True)
        engine.set_attributes(
            age_band=age_band(int(data.users.age[u])),
            occupation=data.users.occupation[u],
            region=region_of_user(data.users.zip_code[u]),
        )
        for r, t in zip(rows, times, strict=True):
            engine.record("purchase", context=CONTEXT, offer=offer_id(int(split.item[r])), now=t)
        engine.close()
        devices.append(Device(u, path, times[0], times[-1], len(rows)))
        if progress:
            progress()
    return Fleet(directory, public_key, tuple(devices))


@dataclass(frozen=True)
class ReportRun:
    """What the report phase did."""

    epochs: int
    reports: int
    engagements: int
    censuses: int
    events: int  # training events that could be reported
    reported_share: float
    drained: bool
    refused_bundles: int
    final_bundle: bytes
    #: what the devices' memoised permanent responses cost (:func:`memo_spend`)
    memos: dict[str, float]


def run_reports(
    fleet: Fleet,
    server: ReportServer,
    bundle: bytes,
    *,
    first_day: float,
    last_day: float,
    cap_days: int,
    publish_every_days: int = 7,
    progress: Callable[[int, int], None] | None = None,
) -> ReportRun:
    """Replay the training period day by day, then up to ``cap_days`` more.

    Each day (at noon UTC) every device whose history has started syncs: it loads the newest
    bundle when one was published, and makes and sends its due reports — only events that have
    happened by then can be reported, under the bundle's L and budgets. A device with nothing
    waiting, or whose 30-day budget allows no report yet (``Engine.next_report_at``), syncs
    once a week (the census cadence). The server publishes every
    ``publish_every_days`` (before that day's syncs) and once more at the end. After the
    training period the run stops as soon as every backlog is drained."""
    start = float(np.floor(first_day / SECONDS_PER_DAY) * SECONDS_PER_DAY)
    days_training = int(np.ceil((last_day - start) / SECONDS_PER_DAY)) + 1
    total_days = days_training + cap_days
    clock = FixedClock(start)
    engines: dict[int, Engine] = {}
    loaded: dict[int, bytes] = {}
    last_sync: dict[int, int] = {}
    latest = bundle
    reports = engagements = censuses = refused = 0
    drained = False
    day = 0
    try:
        for day in range(total_days):
            now = start + day * SECONDS_PER_DAY + 12 * 3600
            clock.set(now)
            if day > 0 and day % publish_every_days == 0:
                latest = server.publish(now)  # before the day's syncs, as a server's cron would
            backlog = 0
            for d in fleet.devices:
                if d.first_t > now:
                    continue
                engine = engines.get(d.user)
                if engine is None:
                    engine = Engine.open(d.path, public_key=fleet.public_key, clock=clock)
                    engines[d.user] = engine
                waiting = engine.report_backlog()
                weekly = day - last_sync.get(d.user, -7) >= 7
                if not weekly and (waiting == 0 or engine.next_report_at() > now):
                    # nothing to send, or the 30-day budget allows nothing yet: the device
                    # sleeps until its weekly sync (about 45% of daily syncs sent nothing)
                    backlog += waiting
                    continue
                if loaded.get(d.user) is not latest:
                    try:
                        engine.load_bundle(latest)
                    except BundleError:
                        refused += 1  # the sync client keeps the last good bundle, and so here
                    loaded[d.user] = latest
                last_sync[d.user] = day
                batch = engine.take_batch()
                if batch is not None:
                    server.submit(batch.body, now)
                    engine.acknowledge(batch, destination="simulated-server")
                    for r in batch.reports:
                        reports += 1
                        engagements += r["kind"] == "engagement"
                        censuses += r["kind"] == "census"
                backlog += engine.report_backlog()
            if progress:
                progress(day + 1, total_days)
            if day >= days_training and backlog == 0:
                drained = True
                break
        final = server.publish(start + (day + 1) * SECONDS_PER_DAY + 12 * 3600)
        memos = memo_spend([e.privacy_ledger() for e in engines.values()])
    finally:
        for engine in engines.values():
            engine.close()
    total = sum(d.events for d in fleet.devices)
    return ReportRun(
        epochs=day + 1,
        reports=reports,
        engagements=engagements,
        censuses=censuses,
        events=total,
        reported_share=engagements / max(total, 1),
        drained=drained,
        refused_bundles=refused,
        final_bundle=final,
        memos=memos,
    )


def memo_spend(ledgers: Sequence[Sequence[LedgerEntry]]) -> dict[str, float]:
    """Per device, from its own privacy ledger: how many permanent responses it memoised (one
    per distinct value it ever reported, cohort ids included) and their ε, in total and in its
    worst 30 days, and that worst window's share of everything the device spent then. Means
    and maxima over the devices that reported."""
    count, total, worst, share = [], [], [], []
    for ledger in ledgers:
        if not ledger:
            continue
        t = np.array([e.t for e in ledger])
        order = np.argsort(t, kind="stable")
        t = t[order]
        eps = np.array([e.epsilon for e in ledger])[order]
        is_memo = np.array([e.kind == "memo" for e in ledger])[order]
        count.append(int(is_memo.sum()))
        total.append(float(eps[is_memo].sum()))
        # every window [t_j, t_j + 30 days), by prefix sums
        ends = np.searchsorted(t, t + WINDOW_S, side="left")
        all_c = np.concatenate([[0.0], np.cumsum(eps)])
        memo_c = np.concatenate([[0.0], np.cumsum(np.where(is_memo, eps, 0.0))])
        starts = np.arange(t.size)
        in_memo = memo_c[ends] - memo_c[starts]
        in_all = all_c[ends] - all_c[starts]
        j = int(np.argmax(in_memo))
        worst.append(float(in_memo[j]))
        share.append(float(in_memo[j] / in_all[j]) if in_all[j] > 0 else 0.0)
    if not count:
        return {}
    return {
        "devices": float(len(count)),
        "memos_mean": float(np.mean(count)),
        "memos_max": float(np.max(count)),
        "memo_epsilon_mean": float(np.mean(total)),
        "memo_epsilon_30_days_mean": float(np.mean(worst)),
        "memo_epsilon_30_days_max": float(np.max(worst)),
        "memo_share_of_30_day_spend_mean": float(np.mean(share)),
    }


def ranking_time(last_t: float) -> float:
    """Just past the cool-down after the last training event, moved out of the default quiet
    hours (22:00–07:00, the device's local time, UTC here) to 07:00."""
    t = last_t + AFTER_LAST_EVENT_S
    dt = datetime.fromtimestamp(t, tz=timezone.utc)
    if dt.hour >= 22 or dt.hour < 7:
        day = (
            dt.date()
            if dt.hour < 7
            else datetime.fromtimestamp(t + SECONDS_PER_DAY, tz=timezone.utc).date()
        )
        t = datetime(day.year, day.month, day.day, 7, tzinfo=timezone.utc).timestamp()
    return t


def recommend_all(
    fleet: Fleet,
    bundle: bytes,
    levels: Sequence[str],
    tunings: Sequence[Tuning],
    *,
    seen: Sequence[set[int]],
    k: int = 10,
    progress: Callable[[], None] | None = None,
) -> dict[tuple[str, int], list[list[int]]]:
    """Each device loads ``bundle`` and ranks at its ranking time, at each personalisation
    level and with each engine tuning (which may differ in ``w_dot`` and ``w_prior`` only).

    As for the centralised reference, movies the user already rated (``seen``, indexed by user)
    are not candidates: the device is asked for ``k`` more than it has seen and those are
    dropped. (The device itself forgets purchases after its 90-day retention, so it cannot be
    the one to exclude them.) Returns 0-based item rankings keyed by (level, tuning index), in
    fleet order."""
    out: dict[tuple[str, int], list[list[int]]] = {
        (level, j): [] for level in levels for j in range(len(tunings))
    }
    # Every device ranks at its own time with the bundle published at the end of the replay,
    # which lies in its future: install it as of its publication (a device refuses a bundle
    # created more than a day ahead of its clock), then rank at the device's time.
    published = open_bundle(bundle, fleet.public_key, now=-math.inf).created
    for d in fleet.devices:
        now = ranking_time(d.last_t)
        clock = FixedClock(max(now, published))
        engine = Engine.open(d.path, public_key=fleet.public_key, clock=clock, tuning=tunings[0])
        engine.load_bundle(bundle)
        clock.set(now)
        known = seen[d.user]
        try:
            for j, tuning in enumerate(tunings):
                # w_dot and w_prior act at ranking time only: no need to rebuild the profile
                engine.tuning = tuning
                for level in levels:
                    engine.update_settings(level=level)
                    out[(level, j)].append(_unseen_top(engine, now, known, k))
        finally:
            engine.close()
        if progress:
            progress()
    return out


def _unseen_top(engine: Engine, now: float, known: set[int], k: int) -> list[int]:
    """The device's top ``k`` movies the user has not rated. The guardrails already rest the
    purchases the device still holds, so a few extra usually suffice; ask for more only when
    they do not (``recommend`` is stateless and its top lists are prefixes of each other, so
    this equals one call with ``k + len(known)``, without explaining hundreds of offers)."""
    want = k + 16
    while True:
        recs = engine.recommend(CONTEXT, k=want, now=now)
        items = [int(r.offer_id[3:]) - 1 for r in recs]
        kept = [i for i in items if i not in known]
        if len(kept) >= k or len(recs) < want or want >= k + len(known):
            return kept[:k]
        want = min(4 * want, k + len(known))


def fleet_users(fleet: Fleet) -> np.ndarray:
    return np.array([d.user for d in fleet.devices], dtype=np.int64)
