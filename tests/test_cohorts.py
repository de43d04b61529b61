"""Learned interest cohorts end to end: real engines record events and make their reports,
the server's real ingest (``parse_batch``) stores them in a real SQLite store, the real
``Aggregator`` publishes signed bundles, and the engines load them, over simulated days.

The fleet has three clearly separated tastes (12 devices each over one category apiece:
groceries, books, music) plus two "twins" that behave like the books devices, one of which
also buys sensitive offers every day. With ``min_population = 5`` and 38 devices the fit aims
at ⌊38 / (1.5·5)⌋ = 5 cohorts, but splits only a cohort whose lower bound reaches 2.5·5 = 12.5;
a group's lower bound is its ~12–14 members less 1.96 σ and the 5 forged reports the threshold
absorbs, so no group is split and each taste keeps one cohort (which is what lets "the same
devices, the same id" be checked exactly).

Privacy parameters are far looser than a product's (ε = 10 per report, large budgets): at 38
devices the product's ε would bury every census in noise (at ε = 6 a 12-device cohort already
missed the publication threshold now and then: the devices' randomness is the OS's, unseeded),
and what is tested here is the wiring, not the privacy/utility trade-off. The server's own noise
is off (``AggregationSettings(noise=False)``) where a test needs exact engagement counts.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from tools.evaluation.aggregation import SimulatedServer

from engine_fixtures import DAY, HOUR, MINUTE, T0, TAXONOMY, Keys
from engine_fixtures import catalog as fixture_catalog
from engine_fixtures import config as fixture_config
from localrank.bundle import Bundle, BundleConfig, build_bundle, open_bundle
from localrank.device.engine import Engine
from localrank.device.fold_in import fold_in
from localrank.device.profile import EVENT_WEIGHT, ProfileRules
from localrank.device.segmentation import SegmentInfo
from localrank.server.aggregate import AggregationSettings, closed_before
from localrank.server.cohorts import round_zero
from localrank.server.statistics import EVENT_WEIGHTS
from localrank.shared.clock import FixedClock
from localrank.shared.segments import ROOT, UNKNOWN_POPULATION

GROUPS = ("groceries", "books", "music")
PER_GROUP = 12
MIN_POPULATION = 5
#: Publications (days after T0, at noon like the devices' syncs): more often than the 7-day
#: census interval, so a round must wait for a whole interval after the previous one.
PUBLISH_DAYS = (7, 10, 14, 17, 21)
DAYS = 22
CONTEXT = "shopping"
SENSITIVE_OFFERS = ("o-health-1", "o-health-2", "o-pharmacy-1", "o-gambling-1")


def cohort_config(mode: str) -> BundleConfig:
    # central mode as the per-epoch design (the continual release has its own tests): these
    # tests need large per-report ε so that 12-device cohorts clear the threshold every run
    extra = {"central_mechanism": "epoch-laplace"} if mode == "central" else {}
    return fixture_config(
        **extra,
        segment_depth=0,
        cohort_slots=8,
        min_population=MIN_POPULATION,
        mode=mode,
        epsilon=10.0,
        epsilon_perm=12.0,
        epoch_epsilon=64.0,
        window_epsilon=4096.0,
        report_limit=5,
    )


def cohort_bundle(keys: Keys, cfg: BundleConfig) -> bytes:
    """Version 1: the fixtures' catalog with round-0 cohorts (one per open category)."""
    cat = fixture_catalog(cfg.d)
    return build_bundle(
        catalog=cat,
        taxonomy=TAXONOMY,
        config=cfg,
        cohorts=round_zero(cat, TAXONOMY, cfg),
        version=1,
        created=T0 - 30 * DAY,
        expires=T0 + 365 * DAY,
        signing_key=keys.private.read_bytes(),
    )


@dataclass
class Device:
    name: str
    group: str
    engine: Engine
    offset: int = 0  # where its daily rotation through the group's offers starts
    joins: int = 0  # the first day it syncs (its history before that stays on the device)
    #: (kind, offer, t, strength) of every event recorded, in order.
    events: list[tuple[str, str, float, float]] = field(default_factory=list)
    #: the cohort under each bundle (by digest), read on the day the bundle was loaded.
    cohort_under: dict[str, int | None] = field(default_factory=dict)

    def record(self, kind: str, offer: str, t: float, strength: float = 1.0) -> None:
        self.engine.record(kind, context=CONTEXT, offer=offer, now=t, strength=strength)
        self.events.append((kind, offer, t, strength))


@dataclass
class Run:
    """What a simulated run left behind."""

    mode: str
    cfg: BundleConfig
    keys: Keys
    devices: list[Device]
    clock: FixedClock
    #: every bundle in force during the run, in order: the base, then each publication.
    bundles: list[Bundle]
    #: (day, device name, the device's segment) after each day's sync.
    segments: list[tuple[int, str, SegmentInfo]]
    #: (day, device name, u of the ranking context) after each day's sync.
    us: list[tuple[int, str, np.ndarray]]
    #: central mode: (bundle held, engagement report) for every report sent.
    engagements: list[tuple[Bundle, dict[str, object]]]

    def device(self, name: str) -> Device:
        return next(d for d in self.devices if d.name == name)

    def rounds(self) -> list[Bundle]:
        """The bundles whose cohorts (factors, centroids or ids) differ from the previous
        round's: round 0 (the base) and every cohort round the server ran, including a round
        that only merged cohorts by the census (central mode, before any cohort row exists)."""
        out: list[Bundle] = []
        for b in self.bundles:
            assert b.cohorts is not None
            prev = out[-1].cohorts if out else None
            if prev is None or any(
                _digest(getattr(b.cohorts, name)) != _digest(getattr(prev, name))
                for name in ("factors", "centroids", "ids")
            ):
                out.append(b)
        return out


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def simulate(
    directory: Path,
    mode: str,
    small: dict[str, int] | None = None,
    joins: dict[str, int] | None = None,
) -> Run:
    """The run: :data:`GROUPS` × :data:`PER_GROUP` devices and the twins, plus ``small``
    groups (category: devices), over :data:`DAYS` days; a group in ``joins`` first syncs on
    that day."""
    keys = Keys(directory / "keys")
    cfg = cohort_config(mode)
    base = cohort_bundle(keys, cfg)
    server = SimulatedServer(
        directory / "server", base, keys.private.read_bytes(), AggregationSettings(noise=False)
    )
    clock = FixedClock(T0)
    devices: list[Device] = []
    names = [(g, f"{g}-{i}", i) for g in GROUPS for i in range(PER_GROUP)]
    names += [("books", "twin-plain", 0), ("books", "twin-sensitive", 0)]
    names += [(g, f"{g}-{i}", i) for g, n in (small or {}).items() for i in range(n)]
    for group, name, i in names:
        engine = Engine.open(
            directory / f"{name}.db", public_key=keys.public, bundle=base, clock=clock
        )
        engine.update_settings(quiet_hours=None, reporting=True)
        dev = Device(name, group, engine, offset=i, joins=(joins or {}).get(group, 0))
        # a history before the run: the first census already names a cohort
        for k in range(4):
            dev.record("purchase", f"o-{group}-{(i + k) % 4}", T0 - (5 - k) * DAY)
        devices.append(dev)
    bundles = [open_bundle(base, keys.public, now=T0)]
    latest = base
    segments: list[tuple[int, str, SegmentInfo]] = []
    us: list[tuple[int, str, np.ndarray]] = []
    engagements: list[tuple[Bundle, dict[str, object]]] = []
    try:
        for day in range(DAYS):
            now = T0 + day * DAY
            clock.set(now)
            if day in PUBLISH_DAYS:
                latest = server.publish(now)
                bundles.append(open_bundle(latest, keys.public, now=now))
            for dev in devices:
                if day < dev.joins:
                    continue
                e = dev.engine
                if e.bundle.digest != bundles[-1].digest:
                    e.load_bundle(latest)
                if dev.name == "twin-sensitive":
                    dev.record("purchase", SENSITIVE_OFFERS[day % 4], now - 3 * HOUR)
                # one purchase a day, rotating through the group's four offers (the twins share
                # an offset: their ordinary events are the same offers at the same times)
                dev.record("purchase", f"o-{dev.group}-{(dev.offset + day) % 4}", now - 2 * HOUR)
                batch = e.take_batch()
                if batch is not None:
                    server.submit(batch.body, now)
                    e.acknowledge(batch, destination="simulated-server")
                    for r in batch.reports:
                        if r["kind"] == "engagement" and mode == "central":
                            engagements.append((e.bundle, r))
                seg = e.segment()
                segments.append((day, dev.name, seg))
                us.append((day, dev.name, e.scoring_inputs(CONTEXT).u.copy()))
                dev.cohort_under.setdefault(e.bundle.digest, seg.cohort)
    finally:
        server.close()
    return Run(mode, cfg, keys, devices, clock, bundles, segments, us, engagements)


@pytest.fixture(scope="module", params=["central", "ldp"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    r = simulate(tmp_path_factory.mktemp(f"cohorts-{request.param}"), request.param)
    yield r
    for d in r.devices:
        d.engine.close()


def expected_u(
    engine: Engine, events: list[tuple[str, str, float, float]], now: float
) -> np.ndarray:
    """The fold-in recomputed from the recorded events, without the profile's code: weight
    ``EVENT_WEIGHT × strength × 0.5^(age / half-life)`` for each event past the cool-down,
    about non-sensitive offers, in a category with ≥ ``min_evidence`` such positive events."""
    b = engine.bundle
    assert b.cohorts is not None
    rules = ProfileRules()
    cat, tax = b.catalog, b.taxonomy
    matured = [ev for ev in events if ev[2] <= now - rules.cooldown_s]
    allowed = [
        ev
        for ev in matured
        if not cat.sensitive[cat.row_of[ev[1]]]
        and not any(tax.sensitive_mask[c] for c in cat.categories_of(cat.row_of[ev[1]]))
    ]
    evidence: dict[int, int] = {}
    for kind, offer, _, _ in allowed:
        if EVENT_WEIGHT[kind] > 0:
            for c in cat.categories_of(cat.row_of[offer]):
                evidence[int(c)] = evidence.get(int(c), 0) + 1
    rows, weights = [], []
    for kind, offer, t, strength in allowed:
        row = cat.row_of[offer]
        if all(evidence.get(int(c), 0) >= rules.min_evidence for c in cat.categories_of(row)):
            rows.append(row)
            age = now - t
            weights.append(EVENT_WEIGHT[kind] * strength * 0.5 ** (age / rules.half_life_s))
    V = cat.embeddings[np.array(rows, dtype=np.int64)]
    return fold_in(V, np.array(weights), b.cohorts.gram_inv)


# -- (a) u is the fold-in of the device's own events ----------------------------------------


def test_u_is_the_fold_in_of_the_devices_own_weighted_events(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    cfg = cohort_config("central")
    clock = FixedClock(T0)
    engine = Engine.open(
        tmp_path / "d.db", public_key=keys.public, bundle=cohort_bundle(keys, cfg), clock=clock
    )
    engine.update_settings(quiet_hours=None)
    assert engine.settings.level == "full"
    dev = Device("d", "groceries", engine)
    # groceries: four events of three kinds and strengths over ten days
    dev.record("purchase", "o-groceries-0", T0 - 10 * DAY)
    dev.record("purchase", "o-groceries-1", T0 - 6 * DAY, strength=2.0)
    dev.record("click", "o-groceries-2", T0 - 3 * DAY, strength=0.5)
    dev.record("view", "o-groceries-3", T0 - 1 * DAY)
    # books: exactly the evidence threshold
    dev.record("click", "o-books-0", T0 - 5 * DAY)
    dev.record("view", "o-books-1", T0 - 4 * DAY, strength=3.0)
    dev.record("purchase", "o-books-2", T0 - 2 * DAY)
    # music: two events, below the evidence threshold
    dev.record("purchase", "o-music-0", T0 - 2 * DAY)
    dev.record("purchase", "o-music-1", T0 - 1 * DAY)
    # games: the third event is still cooling down, so the evidence is two
    dev.record("purchase", "o-games-0", T0 - 3 * DAY)
    dev.record("purchase", "o-games-1", T0 - 2 * DAY)
    dev.record("purchase", "o-games-2", T0 - 10 * MINUTE)
    # sensitive offers (one also in groceries) never count
    for k in range(4):
        dev.record("purchase", SENSITIVE_OFFERS[k], T0 - (k + 1) * HOUR)
    want = expected_u(engine, dev.events, T0)
    got = engine.scoring_inputs(CONTEXT).u
    assert got.dtype == np.float32
    assert np.linalg.norm(want) > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # the rules made a difference: the fold-in of every ordinary event (music's two, the
    # cooling games event) lies far outside the tolerance
    cat = engine.bundle.catalog
    ordinary = [ev for ev in dev.events if ev[1] not in SENSITIVE_OFFERS]
    everything = fold_in(
        cat.embeddings[[cat.row_of[o] for _, o, _, _ in ordinary]],
        [EVENT_WEIGHT[k] * s * 0.5 ** ((T0 - t) / ProfileRules().half_life_s)
         for k, _, t, s in ordinary],
        engine.bundle.cohorts.gram_inv,  # type: ignore[union-attr]
    )  # fmt: skip
    assert np.abs(everything - want).max() > 0.1 * np.abs(want).max()
    # the same holds days later, after decay (nothing new recorded)
    clock.set(T0 + 9 * DAY)
    np.testing.assert_allclose(
        engine.scoring_inputs(CONTEXT).u,
        expected_u(engine, dev.events, T0 + 9 * DAY),
        rtol=1e-5,
        atol=1e-6 * np.abs(want).max(),
    )
    engine.close()


def test_u_stays_the_fold_in_under_learned_factors(run: Run) -> None:
    """After the run every device holds a bundle of learned factors; its u is still exactly
    the fold-in of its own events over those factors."""
    last = run.bundles[-1]
    assert run.rounds()[-1] is not run.bundles[0], "no round ran: the factors are round 0's"
    now = run.clock.now()
    for dev in run.devices:
        assert dev.engine.bundle.digest == last.digest
        want = expected_u(dev.engine, dev.events, now)
        got = dev.engine.scoring_inputs(CONTEXT, now=now).u
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


# -- (b) the server's centroids are the members' mean fold-in ------------------------------


def _members(run: Run, bundle: Bundle) -> dict[int, list[Device]]:
    by_id: dict[int, list[Device]] = {}
    for dev in run.devices:
        cid = dev.cohort_under.get(bundle.digest)
        if cid is not None:
            by_id.setdefault(cid, []).append(dev)
    return by_id


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_centroids_lie_at_the_members_mean_fold_in(run: Run) -> None:
    """Each learned centroid points where its members' own fold-ins point on average.

    Tolerance: cosine ≥ 0.95 with the mean of the members' u (under the bundle that carries
    the centroid). They are not equal by construction: the centroid folds in the cohort's
    reported engagement per member (every report of the window counts alike, reports wait
    under L per epoch, purchases weigh EVENT_WEIGHTS' 2 and ldp adds de-biased noise), a
    device its own events with the profile's weights (3 per purchase, halving every 14 days,
    its history from before the run included). All members here rotate through the same four
    offers, so both weightings spread almost evenly over those offers and the directions agree
    closely; a centroid of another taste has a cosine near 0 (disjoint categories), and the
    test also requires every centroid to be far nearer its own group than any other."""
    rounds = run.rounds()[1:]
    assert len(rounds) >= 2
    for b in rounds:
        assert b.cohorts is not None
        by_group: dict[str, list[Device]] = {}
        for cid, members in _members(run, b).items():
            groups = {m.group for m in members}
            assert len(groups) == 1, f"cohort {cid} mixes tastes {groups}"
            by_group[groups.pop()] = members
        assert set(by_group) == set(GROUPS)
        centroid = dict(zip(b.cohorts.ids.tolist(), b.cohorts.centroids, strict=True))
        day = round((b.created - T0) / DAY)
        u_of = {name: u for d, name, u in run.us if d == day}
        for group, members in by_group.items():
            cid = members[0].cohort_under[b.digest]
            assert cid is not None
            mean = np.mean([u_of[m.name] for m in members], axis=0)
            assert _cos(centroid[cid], mean) >= 0.95
            for other, others in by_group.items():
                if other != group:
                    other_mean = np.mean([u_of[m.name] for m in others], axis=0)
                    assert _cos(centroid[cid], other_mean) <= 0.2


def test_central_centroids_fold_in_exactly_the_reported_engagement(run: Run) -> None:
    """Central mode without server noise: a round's centroid of cohort c is, in direction,
    exactly ``(VᵀV + λI)⁻¹ Vᵀ r_c`` where ``r_c`` is what the devices reported in cohort c
    (EVENT_WEIGHTS per report) in the epochs folded by then. Only the direction is checked
    (the row is divided by the census' estimate). Tolerance 1e-4: round 0's cohorts nobody
    joined (coffee, sci-fi, games) merge into a neighbour with their predicted rates at a census
    size floored at 1, at most ~1 count against the ≥ 48 of a group's row (≤ 2% of its mass,
    so ≤ 2e-4 off in cosine, and in practice far less: it lies on other offers); float32
    storage of gram_inv and the centroids adds ~1e-7."""
    if run.mode != "central":
        pytest.skip("ldp rows carry de-biased noise; the mean test covers them")
    fitted = 0
    for prev, b in itertools.pairwise(run.rounds()):
        assert b.cohorts is not None and prev.cohorts is not None
        if _digest(b.cohorts.factors) == _digest(prev.cohorts.factors):
            continue  # a merge by the census alone: no row was fitted (test_merge_only_joins_...)
        fitted += 1
        closed = closed_before(b.created, AggregationSettings().grace_seconds)
        cat = b.catalog
        for cid, c in zip(b.cohorts.ids.tolist(), b.cohorts.centroids, strict=True):
            r = np.zeros(len(cat))
            for _held, rep in run.engagements:
                if rep["segment"] == cid and int(str(rep["epoch"])) < closed:
                    r[cat.row_of[str(rep["offer"])]] += EVENT_WEIGHTS[str(rep["event"])]
            assert r.sum() > 0
            V = cat.embeddings.astype(np.float64)
            want = b.cohorts.gram_inv.astype(np.float64) @ (V.T @ r)
            assert _cos(c, want) >= 1 - 1e-4
    assert fitted >= 1


# -- (c) k-anonymity of cohorts ---------------------------------------------------------------


def test_no_cohort_below_min_population_is_published(run: Run) -> None:
    for b in run.bundles:
        assert b.cohorts is not None
        for cid in b.segments.cohort_ids:
            pop = int(b.segments.populations[cid])
            assert pop == UNKNOWN_POPULATION or pop >= MIN_POPULATION, (b.version, cid, pop)
        # and every populated slot is a cohort the bundle carries
        populated = {
            cid for cid in b.segments.cohort_ids if b.segments.populations[cid] >= MIN_POPULATION
        }
        assert populated <= set(b.cohorts.ids.tolist())
    assert any(
        b.segments.populations[cid] >= MIN_POPULATION
        for b in run.bundles
        for cid in b.segments.cohort_ids
    ), "no cohort was ever published with a population: the test checked nothing"


def test_an_unmeasured_cohort_is_never_active(run: Run) -> None:
    seen_unmeasured = seen_active = False
    for day, name, seg in run.segments:
        held = next(b for b in reversed(run.bundles) if b.created <= T0 + day * DAY)
        segs = held.segments
        if seg.cohort is not None and segs.populations[seg.cohort] < MIN_POPULATION:
            seen_unmeasured = True
            assert seg.active == ROOT, (day, name, seg)
        if segs.is_cohort(seg.active):
            seen_active = True
            assert segs.populations[seg.active] >= MIN_POPULATION
    assert seen_unmeasured and seen_active
    # central mode sends the active segment in the clear: never an unmeasured cohort
    for held, rep in run.engagements:
        s = int(str(rep["segment"]))
        assert s == ROOT or held.segments.populations[s] >= MIN_POPULATION


# -- (d) ids keep their meaning ------------------------------------------------------------


def test_cohort_ids_are_stable_across_two_rounds(run: Run) -> None:
    rounds = run.rounds()
    assert len(rounds) >= 3, "expected round 0 and two learned rounds"
    for b in rounds:
        assignment = {dev.name: dev.cohort_under[b.digest] for dev in run.devices}
        # one cohort per taste, a different one for each
        per_group = {g: {assignment[d.name] for d in run.devices if d.group == g} for g in GROUPS}
        assert all(len(ids) == 1 and None not in ids for ids in per_group.values()), per_group
        assert len({next(iter(ids)) for ids in per_group.values()}) == len(GROUPS)
    for before, after in itertools.pairwise(rounds):
        for dev in run.devices:
            assert dev.cohort_under[after.digest] == dev.cohort_under[before.digest], dev.name
    # round 0's ids carry over too: the taste that joined the groceries cohort keeps its id
    for dev in run.devices:
        assert dev.cohort_under[rounds[-1].digest] == dev.cohort_under[rounds[0].digest]


def test_rounds_wait_a_census_interval(run: Run) -> None:
    """Publications come every 3–4 days; a cohort round (new factors, centroids, ids) runs
    only once a whole census interval has passed since the previous one, and in between the
    payload stays as it is."""
    rounds = run.rounds()[1:]
    interval = run.cfg.census_interval_days * DAY
    for a, b in itertools.pairwise(rounds):
        assert b.created - a.created >= interval
    assert len(run.bundles) - 1 == len(PUBLISH_DAYS)
    assert len(rounds) < len(PUBLISH_DAYS)
    round_digests = {b.digest for b in rounds}
    for prev, b in itertools.pairwise(run.bundles):
        assert prev.cohorts is not None and b.cohorts is not None
        if b.digest not in round_digests:
            np.testing.assert_array_equal(b.cohorts.centroids, prev.cohorts.centroids)
            np.testing.assert_array_equal(b.cohorts.ids, prev.cohorts.ids)


# -- (e) sensitive events move nothing -------------------------------------------------------


def test_sensitive_events_change_neither_cohort_nor_u(run: Run) -> None:
    plain, sensitive = run.device("twin-plain"), run.device("twin-sensitive")
    ordinary = [ev for ev in sensitive.events if ev[1] not in SENSITIVE_OFFERS]
    assert ordinary == plain.events
    assert len(sensitive.events) - len(plain.events) >= 3 * len(SENSITIVE_OFFERS)
    seg = {(d, n): s for d, n, s in run.segments}
    u = {(d, n): v for d, n, v in run.us}
    for day in range(DAYS):
        a, b = seg[day, "twin-plain"], seg[day, "twin-sensitive"]
        assert a.cohort == b.cohort and a.active == b.active
        np.testing.assert_array_equal(u[day, "twin-plain"], u[day, "twin-sensitive"])
    assert seg[DAYS - 1, "twin-plain"].cohort is not None


def test_the_servers_cohort_state_survives_the_bundle(tmp_path: Path) -> None:
    """The time of the last round travels in the bundle's extras (the server keeps no other
    state); only the payload's own arrays are lifted out of them into ``Bundle.cohorts``."""
    keys = Keys(tmp_path)
    cfg = cohort_config("ldp")
    cat = fixture_catalog(cfg.d)
    payload = round_zero(cat, TAXONOMY, cfg)
    data = build_bundle(
        catalog=cat, taxonomy=TAXONOMY, config=cfg, cohorts=payload, version=1,
        created=T0 - DAY, expires=T0 + DAY, signing_key=keys.private.read_bytes(),
        extras={"extra_cohort_round_t": np.array([T0 - DAY])},
    )  # fmt: skip
    b = open_bundle(data, keys.public, now=T0)
    np.testing.assert_array_equal(b.extras["extra_cohort_round_t"], [T0 - DAY])
    assert not set(b.extras) & set(payload.to_arrays())
    assert b.cohorts is not None
    np.testing.assert_array_equal(b.cohorts.ids, payload.ids)


# -- a taste too small for a cohort of its own ------------------------------------------------


@pytest.fixture(scope="module", params=["central", "ldp"])
def small_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """The same fleet plus three games devices: below min_population, never a cohort alone."""
    r = simulate(tmp_path_factory.mktemp("small"), request.param, small={"games": 3})
    yield r
    for d in r.devices:
        d.engine.close()


def test_a_taste_too_small_for_a_cohort_keeps_its_interest(small_run: Run) -> None:
    """The games devices' round-0 cohort is never published, so in central mode none of its
    engagement is collected. A round must not read that as "engaged with nothing": a zero row
    shrank the games offers' factors to exactly 0, and with them the games devices' u, which
    left them outside every cohort (and without an interest term) for good. Central mode merges
    them into a neighbouring published cohort; ldp keeps their learning cohort apart (published,
    if at all, only within a group that clears the threshold). Either way they keep a u that
    points at their offers."""
    run = small_run
    assert len(run.rounds()) >= 3
    last = run.bundles[-1]
    assert last.cohorts is not None
    cat = last.catalog
    u_of = {name: u for d, name, u in run.us if d == DAYS - 1}
    games = [d for d in run.devices if d.group == "games"]
    cohorts = {d.cohort_under[last.digest] for d in games}
    assert len(cohorts) == 1 and None not in cohorts
    cid = cohorts.pop()
    assert cid is not None
    if run.mode == "central":
        assert last.segments.populations[cid] >= MIN_POPULATION
    else:
        # ldp: the games devices keep a learning cohort of their own, too small to publish;
        # they rank by a published cohort only if one has their taste (none has here)
        assert last.segments.populations[cid] < MIN_POPULATION
        active = {s.active for d, n, s in run.segments if d == DAYS - 1 and n.startswith("games")}
        assert active == {ROOT}
    for dev in games:
        u = u_of[dev.name].astype(np.float64)
        assert np.linalg.norm(u) > 0
        interest = [float(u @ cat.embeddings[cat.row_of[f"o-games-{k}"]]) for k in range(4)]
        assert min(interest) > 0, (dev.name, interest)


# -- a fleet that starts too small --------------------------------------------------------------


@pytest.fixture(scope="module", params=["central", "ldp"])
def late_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """Three games devices from day 0; the three big groups (and the twins) join on day 8."""
    r = simulate(
        tmp_path_factory.mktemp("late"),
        request.param,
        small={"games": 3},
        joins={"groceries": 8, "books": 8, "music": 8},
    )
    yield r
    for d in r.devices:
        d.engine.close()


def test_a_round_with_too_few_devices_keeps_the_cohorts(late_run: Run) -> None:
    """The first round (ldp: day 7) sees three devices, too few for any cohort. It must keep
    the cohorts it has: publishing none ended cohorts for good (no device then reports one, so
    no later round has a row to learn from), whatever the fleet grew to."""
    run = late_run
    for b in run.bundles:
        assert b.cohorts is not None and b.cohorts.ids.size > 0, b.version
    last = run.bundles[-1]
    assert last.cohorts is not None
    assert len(run.rounds()) >= 2, "no cohort round ran once the fleet had grown"
    per_group = {
        g: {d.cohort_under[last.digest] for d in run.devices if d.group == g} for g in GROUPS
    }
    assert all(len(ids) == 1 and None not in ids for ids in per_group.values()), per_group
    ids = [next(iter(v)) for v in per_group.values()]
    assert len(set(ids)) == len(GROUPS)
    active = {n: s.active for d, n, s in run.segments if d == DAYS - 1}
    for g, cid in zip(GROUPS, ids, strict=True):
        assert cid is not None
        # each big taste ranks by a published cohort: its own (central; ldp when it publishes
        # alone) or, in ldp, the group its learning cohort is published with
        ranked_by = {active[d.name] for d in run.devices if d.group == g}
        assert len(ranked_by) == 1, (g, ranked_by)
        (published,) = ranked_by
        assert last.segments.populations[published] >= MIN_POPULATION
        if run.mode == "central":
            assert published == cid


def test_merge_only_joins_small_cohorts_by_the_census_alone() -> None:
    """Before any cohort row exists (central mode), cohorts too small to publish merge by their
    census populations: the merged centroid is the size-weighted mean (the fold-in of the
    summed rows), its id the largest member's, its population the group's lower bound."""
    from localrank.bundle.cohorts import CohortPayload, encode_factors
    from localrank.server.cohorts import merge_only

    V = np.eye(4)[:, :2] + 0.1  # 4 offers, f = 2
    centroids = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    payload = CohortPayload.build(
        encode_factors(V, "float32"), centroids, np.array([10, 11, 12]), regularization=1.0
    )
    sizes = np.array([40.0, 20.0, 100.0])
    merged = merge_only(payload, sizes, np.zeros(3), min_population=50, margin=0.0)
    assert merged is not None
    out, lower = merged
    assert out.ids.tolist() == [10, 12]
    np.testing.assert_allclose(out.centroids[0], (40 * centroids[0] + 20 * centroids[1]) / 60)
    np.testing.assert_allclose(out.centroids[1], centroids[2])
    np.testing.assert_allclose(lower, [60.0, 100.0])
    # nothing to merge, or nothing publishable: no change
    assert merge_only(payload, np.full(3, 80.0), np.zeros(3), min_population=50, margin=0) is None
    assert merge_only(payload, np.full(3, 5.0), np.zeros(3), min_population=50, margin=0) is None


def test_between_rounds_a_published_group_is_measured_again_as_a_group(tmp_path: Path) -> None:
    """ldp publishes learning cohorts in groups. Between rounds the bundle's groups (its
    ``extra_cohort_group``) stay: each group's population is its members' census summed, less
    1.96·√(summed variances), published under its first id only when that reaches
    min_population; a published group's engagement is pooled under that id for the priors. The
    groups travel on, published or not (a later census may measure one that clears it)."""
    from localrank.server.cohorts import GROUPS, ROUND_TIME, next_cohorts
    from localrank.server.statistics import Engagement, Populations

    keys = Keys(tmp_path)
    cfg = cohort_config("ldp")
    cat = fixture_catalog(cfg.d)
    payload = round_zero(cat, TAXONOMY, cfg)
    ids = payload.ids.tolist()
    assert len(ids) >= 4
    a, b, c, d = ids[:4]
    head = np.full(len(ids), -1, np.int64)
    head[[0, 1]] = a  # group (a, b), published under a
    head[[2, 3]] = c  # group (c, d), too small this time
    t = T0 + 3 * DAY
    data = build_bundle(
        catalog=cat, taxonomy=TAXONOMY, config=cfg, cohorts=payload, version=2,
        created=t - DAY, expires=t + 30 * DAY, signing_key=keys.private.read_bytes(),
        extras={ROUND_TIME: np.array([t - DAY]), GROUPS: head},
    )  # fmt: skip
    bundle = open_bundle(data, keys.public, now=t)
    d_seg = bundle.segments.d_seg
    estimate = np.zeros(d_seg)
    estimate[[a, b, c, d]] = [4.0, 3.0, 2.0, 1.0]
    variance = np.zeros(d_seg)
    variance[[a, b]] = [0.25, 0.0]
    pops = Populations(estimate, variance, np.full(d_seg, -1, np.int64), reports=10)
    tracked = np.array([a, b, c, d], np.int64)
    scores = np.arange(len(cat) * 4, dtype=np.float64).reshape(len(cat), 4)
    eng = Engagement(tracked, scores, np.ones_like(scores), scores.sum(1), np.ones(len(cat)), 40)
    out = next_cohorts(bundle, t, pops, eng, np.full(d_seg, -1, np.int64), tolerated=0)
    assert out is not None and not out.round_ran
    assert out.payload is bundle.cohorts
    # (a, b): 4 + 3 − 1.96·√0.25 = 6.02 ≥ 5, published under a; (c, d): 3 < 5
    assert out.populations[a] == 6
    for cid in (b, c, d):
        assert out.populations[cid] == UNKNOWN_POPULATION
    np.testing.assert_array_equal(out.extras[GROUPS], head)
    assert out.engagement is not None
    np.testing.assert_array_equal(out.engagement.scores[:, 0], scores[:, 0] + scores[:, 1])
    np.testing.assert_array_equal(out.engagement.scores[:, 1:], scores[:, 1:])  # (c, d) unpublished


def test_the_bundles_fold_in_weight_scales_w_dot_on_the_engine_and_in_onnx(tmp_path: Path) -> None:
    """A bundle whose cohort rows were a quarter signal (``fold_in_weight`` 0.25) makes the
    engine's kernel weigh ``u·E`` by ``w_dot·0.25`` at level full, and the ONNX export bake in
    the same weight, so the two keep parity."""
    from localrank.bundle.cohorts import CohortPayload
    from localrank.device.engine import Tuning
    from localrank.device.onnx_export import build_model

    keys = Keys(tmp_path)
    cfg = cohort_config("ldp")
    cat = fixture_catalog(cfg.d)
    zero = round_zero(cat, TAXONOMY, cfg)
    payload = CohortPayload.build(
        dict(zero.encoded), zero.centroids, zero.ids,
        regularization=zero.regularization, fold_in_weight=0.25,
    )  # fmt: skip
    data = build_bundle(
        catalog=cat, taxonomy=TAXONOMY, config=cfg, cohorts=payload, version=2,
        created=T0 - DAY, expires=T0 + 30 * DAY, signing_key=keys.private.read_bytes(),
    )  # fmt: skip
    b = open_bundle(data, keys.public, now=T0)
    assert b.cohorts is not None and b.cohorts.fold_in_weight == 0.25
    clock = FixedClock(T0)
    engine = Engine.open(tmp_path / "d.db", public_key=keys.public, bundle=data, clock=clock,
                         tuning=Tuning(w_dot=2.0, w_prior=1.0))  # fmt: skip
    try:
        for k in range(4):
            clock.set(T0 + k * HOUR)
            engine.record("purchase", context=CONTEXT, offer=f"o-books-{k}", now=T0 + k * HOUR)
        now = T0 + DAY
        clock.set(now)
        assert engine.scoring_inputs(CONTEXT, now=now).w_dot == 0.5
        engine.update_settings(level="coarse")
        assert engine.scoring_inputs(CONTEXT, now=now).w_dot == 0.0
    finally:
        engine.close()
    model = build_model(b, k=5, w_dot=2.0, w_prior=1.0)
    meta = {p.key: p.value for p in model.metadata_props}
    assert float(meta["localrank.w_dot"]) == 0.5
