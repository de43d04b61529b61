"""Aggregation: folding, noise, estimates, thresholds, priors, embeddings and publishing.

- Statistics use the real chained oracles over the demo segment domain (d_seg = 1650), and
  check estimates against the truth in units of the *reported* standard error. Each check is
  at 4.5σ (two-sided normal tail 6.8e-6) and the variance-ratio checks below are at ≥ 3.4σ of
  their own sampling error, so the file's false-failure rate stays well under 1e-3.
- End to end: reports POSTed to a live server, the clock moved past the window, one
  ``aggregate`` run: the epoch is folded, raw reports deleted, nonces kept, and a new signed
  bundle published with populations, priors and (once segments are usable) learned embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from localrank.bundle import open_bundle
from localrank.device.engine import Engine
from localrank.device.sync import SyncClient
from localrank.privacy import oracles as ldp
from localrank.server.app import create_app
from localrank.server.debias import discrete_laplace_variance
from localrank.server.ingest import config_key
from localrank.server.offer_embeddings import learned_embeddings
from localrank.server.statistics import category_priors, engagement, populations
from localrank.server.storage import ReportRow
from localrank.server.sums import CensusSums, EngagementSums, decode_sum, fold_reports
from localrank.shared.clock import FixedClock, epoch_of
from localrank.wire.reports import batch_body

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import (  # noqa: E402
    PUBLIC_KEY,
    LiveServer,
    base_bundle,
    demo_bundle,
    device_reports,
    post_all,
    server_config,
)

pytest_plugins = ["server_fixtures"]

B = demo_bundle()
SEGS = B.segments
D = SEGS.d_seg
BOOKS = SEGS.id_of("books")
BOOKS_MOVIES = SEGS.id_of("books/movies")
DEEP = SEGS.id_of("pets/kids/gh-u09")


def _census(oracle: str, finest: np.ndarray, eps: float = 2.0, perm: float = 4.0) -> CensusSums:
    r = ldp.Randomizer(ldp.Oracle(oracle), D, eps, perm)
    wire = r.instantaneous(r.permanent(finest))
    if oracle == "grr":
        support = np.bincount(wire, minlength=D)
    else:
        support = ldp.unpack_bits(wire, D).sum(axis=0)
    return CensusSums(config_key("ldp", oracle, eps, perm), support.astype(np.int64), len(finest))


def _population(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, int]]:
    """n devices: 40% finest in books/movies, 20% in books, the rest uniform over the domain."""
    finest = rng.integers(0, D, size=n)
    k1, k2 = int(0.4 * n), int(0.6 * n)
    finest[:k1] = BOOKS_MOVIES
    finest[k1:k2] = BOOKS
    order = np.argsort(-_depths())
    sub = np.zeros(D, dtype=np.int64)
    np.add.at(sub, finest, 1)
    for s in order:
        if s:
            sub[SEGS.parents[s]] += sub[s]
    return finest, {
        0: int(sub[0]),
        BOOKS: int(sub[BOOKS]),
        BOOKS_MOVIES: int(sub[BOOKS_MOVIES]),
        DEEP: int(sub[DEEP]),
    }


def _depths() -> np.ndarray:
    return np.array([SEGS.depth_of(s) for s in range(D)])


@pytest.mark.parametrize("oracle", ["oue", "grr"])
def test_subtree_population_estimates_are_unbiased_with_the_reported_variance(oracle: str) -> None:
    rng = np.random.default_rng(5)
    z: list[float] = []
    runs = 40
    for _ in range(runs):
        finest, truth = _population(4000, rng)
        pops = populations(
            [_census(oracle, finest)], parents=SEGS.parents, min_population=50, central_epsilon=1.0
        )
        # The root's population is the census count itself (exact here: the helper does not
        # noise n), so only subtree sums are standardised.
        assert pops.estimate[0] == truth[0]
        for seg, true in truth.items():
            if seg in (0, DEEP):
                continue
            se = math.sqrt(pops.variance[seg])
            z.append((pops.estimate[seg] - true) / se)
            assert abs(z[-1]) < 4.5, (oracle, seg, pops.estimate[seg], true, se)
    # The reported variance is the real one: mean z² over 80 standardised errors is 1 ± 0.16,
    # so [0.45, 1.7] is 3.4σ below and 4.4σ above.
    mean_sq = float(np.mean(np.square(z)))
    assert 0.45 < mean_sq < 1.7, mean_sq
    assert abs(float(np.mean(z))) < 4.5 / math.sqrt(len(z)) * 1.5


def test_populations_are_published_only_above_the_lower_bound_and_under_a_published_parent() -> (
    None
):
    rng = np.random.default_rng(11)
    finest, truth = _population(20000, rng)
    pops = populations(
        [_census("oue", finest)], parents=SEGS.parents, min_population=50, central_epsilon=1.0
    )
    pub = pops.published
    lower = pops.lower
    assert pub[0] == round(pops.estimate[0])  # the root is always published
    for s in range(1, D):
        allowed = lower[s] >= 50 and pub[SEGS.parents[s]] >= 0
        assert (pub[s] >= 0) == allowed, s
        if allowed:
            assert pub[s] == round(pops.estimate[s])
    assert pub[BOOKS] >= 50 and pub[BOOKS_MOVIES] >= 50
    assert abs(pub[BOOKS] - truth[BOOKS]) < 4.5 * math.sqrt(pops.variance[BOOKS])
    # Segments with a handful of devices are folded into their parents (a few false positives
    # at the 2.5% one-sided rate are the price of thresholding noisy estimates).
    tiny = [s for s in range(1, D) if s not in (BOOKS, BOOKS_MOVIES) and SEGS.depth_of(s) == 1]
    assert sum(pub[s] >= 0 for s in tiny) <= 4
    deep = _depths() == 3
    assert np.mean(pub[deep] >= 0) < 0.01


def _rows(reports: list[dict], epoch: int) -> list[ReportRow]:
    from localrank.server.ingest import IngestRules, parse_batch

    rules = IngestRules.from_bundles([B])
    out: list[ReportRow] = []
    for i in range(0, len(reports), 256):
        out += parse_batch(batch_body(reports[i : i + 256]), rules, epoch)
    return out


def test_partial_sums_merge_by_addition() -> None:
    epoch = 20000
    rng = np.random.default_rng(3)
    finest = rng.integers(0, D, size=600)
    offers = [B.catalog.ids[i] for i in rng.integers(0, 50, size=600)]
    rows = _rows(
        device_reports(finest, epoch=epoch) + device_reports(finest, epoch=epoch, offers=offers),
        epoch,
    )
    tracked = np.array([0, BOOKS, BOOKS_MOVIES, 17, 300])
    kw = dict(epoch=epoch, d_seg=D, parents=SEGS.parents, offers=B.catalog.ids, tracked=tracked,
              central_epsilon=1.0, report_limit=3)  # fmt: skip
    rows = [rows[i] for i in rng.permutation(len(rows))]
    whole = {r.kind: decode_sum(r) for r in fold_reports(rows, **kw)}
    a = {r.kind: decode_sum(r) for r in fold_reports(rows[:250], part="a", **kw)}
    b = {r.kind: decode_sum(r) for r in fold_reports(rows[250:], part="b", **kw)}
    assert np.array_equal(a["census"].support + b["census"].support, whole["census"].support)
    assert np.array_equal(
        a["engagement"].values + b["engagement"].values, whole["engagement"].values
    )
    assert whole["census"].support.sum() > 0


def test_central_counts_are_noised_everywhere_with_sensitivity_l() -> None:
    epoch = 20000
    L = 3
    rng = np.random.default_rng(9)
    n = 3000
    segs = rng.choice([0, BOOKS, BOOKS_MOVIES], size=n)
    offer_idx = rng.integers(0, 20, size=n)
    rows = [
        ReportRow(f"{i:032x}", epoch, "engagement", config_key("central", "none", None, None),
                  int(segs[i]), None, B.catalog.ids[offer_idx[i]], "click")
        for i in range(n)
    ]  # fmt: skip
    # A report whose segment is not tracked counts for its nearest tracked ancestor.
    central = config_key("central", "none", None, None)
    deep = SEGS.id_of("books/movies/gh-u09")
    rows.append(
        ReportRow("f" * 32, epoch, "engagement", central, deep, None, B.catalog.ids[0], "click")
    )
    tracked = np.array([0, BOOKS, BOOKS_MOVIES])
    (row,) = fold_reports(rows, epoch=epoch, d_seg=D, parents=SEGS.parents, offers=B.catalog.ids,
                          tracked=tracked, central_epsilon=1.0, report_limit=L)  # fmt: skip
    s = decode_sum(row)
    assert isinstance(s, EngagementSums)
    truth = np.zeros_like(s.values)
    for i in range(n):
        truth[offer_idx[i], 1, list(tracked).index(segs[i])] += 1
    truth[0, 1, 2] += 1
    noise = s.values - truth
    sd = math.sqrt(discrete_laplace_variance(1.0, L))
    # No cell's noise is implausibly large. Discrete Laplace tails: P(|Z| ≥ m) = 2αᵐ/(1 + α),
    # α = exp(−ε/Δ); m is chosen so that *some* cell of all of them (24,000 here) passes it with
    # probability 1e-6. (A 12σ bound per cell was 1e-3 per run over that many cells.)
    alpha = math.exp(-1.0 / L)
    bound = math.log(1e-6 * (1 + alpha) / (2 * noise.size)) / math.log(alpha)
    assert np.all(np.abs(noise) < bound), (np.abs(noise).max(), bound)
    # Every cell is noised, reported or not, and the noise has the variance of Δ = L.
    assert np.mean(noise[20:] != 0) > 0.7
    ratio = float(np.var(noise)) / sd**2
    assert 0.9 < ratio < 1.1, ratio
    eng = engagement([s], offers=B.catalog.ids, d_seg=D, central_epsilon=1.0, report_limit=L)
    w = np.array([0.0, 1.0, 2.0, 0.0])  # EVENT_WEIGHTS, in EVENTS order
    assert np.allclose(eng.popularity, (s.values * w[None, :, None]).sum(axis=(1, 2)))
    assert np.allclose(eng.popularity_variance, 3 * sd**2 * 5)


def test_priors_follow_segment_engagement_and_never_favour_sensitive_categories() -> None:
    C = len(B.taxonomy)
    tracked = np.array([0, BOOKS, BOOKS_MOVIES])
    scores = np.zeros((len(B.catalog), 3))
    primary = B.catalog.category
    movies = B.taxonomy.index("movies")
    scores[primary == movies, 2] = 10.0  # books/movies engages with movies
    scores[primary == B.taxonomy.index("groceries"), 0] = 2.0
    from localrank.server.statistics import Engagement

    eng = Engagement(
        tracked, scores, np.ones_like(scores), np.zeros(len(B.catalog)), np.zeros(len(B.catalog)), 0
    )
    published = np.full(D, -1)
    published[[0, BOOKS, BOOKS_MOVIES]] = 1000
    priors = category_priors(eng, primary=primary, sensitive_categories=B.taxonomy.sensitive_mask,
                             parents=SEGS.parents, published=published)  # fmt: skip
    assert priors.shape == (D, C)
    assert np.allclose(priors.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(priors[:, B.taxonomy.sensitive_mask] == 0)
    assert priors[BOOKS_MOVIES, movies] > priors[BOOKS, movies] > priors[0, movies] > 0
    # A segment that is not published uses its parent's prior.
    child = SEGS.id_of("books/movies/gh-u09")
    assert np.array_equal(priors[child], priors[BOOKS_MOVIES])


def test_learned_embeddings_group_offers_engaged_by_the_same_segments() -> None:
    rng = np.random.default_rng(1)
    n, d, T = 60, 16, 6
    content = rng.normal(size=(n, d))
    scores = np.zeros((n, T))
    scores[:20, :3] = rng.uniform(20, 40, size=(20, 3))
    scores[20:40, 3:] = rng.uniform(20, 40, size=(20, 3))
    E = learned_embeddings(scores, content)
    assert E is not None and E.shape == (n, d) and E.dtype == np.float32
    assert np.allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    a, b = E[:20], E[20:40]
    within = float(np.mean(a @ a.T))
    across = float(np.mean(a @ b.T))
    assert within > across + 0.1
    # Offers nobody engaged with keep their content geometry (the projected content part).
    cold = E[40:]
    assert np.allclose(cold[:, -min(T - 1, d // 2) :], 0)
    assert np.array_equal(E, learned_embeddings(scores, content))  # deterministic
    assert learned_embeddings(scores[:, :1], content) is None  # one segment: no signal
    assert learned_embeddings(np.zeros((n, T)), content) is None


@pytest.fixture
def sharp(db_url: str, clock: FixedClock, tmp_path: Path) -> Iterator[LiveServer]:
    """A live server whose base bundle asks for ε = 6, ε_perm = 8: the pipeline test wants
    estimates sharp enough to publish segments from a few thousand devices."""
    path = base_bundle(tmp_path / "sharp.bundle", epsilon=6.0, epsilon_perm=8.0)
    with LiveServer(create_app(server_config(db_url, clock, base_bundle=path))) as server:
        yield server


def test_aggregate_end_to_end_publishes_signed_bundles(
    sharp: LiveServer, clock: FixedClock, tmp_path: Path
) -> None:
    live = sharp
    b1 = open_bundle(live.state.bundle()[1], PUBLIC_KEY, now=clock.now())
    rng = np.random.default_rng(17)
    e0 = epoch_of(clock.now())
    finest, _ = _population(6000, rng)
    n_census = post_all(live.url, device_reports(finest, epoch=e0, bundle=b1))
    assert n_census == 6000
    # Engagement before any population is published: every device's active segment is the root.
    movie_offers = [
        B.catalog.ids[i]
        for i in np.flatnonzero(B.catalog.category == B.taxonomy.index("movies"))[:30]
    ]
    offers = [movie_offers[i % 30] for i in range(2400)]
    zeros = np.zeros(2400, dtype=np.int64)
    post_all(live.url, device_reports(zeros, epoch=e0, offers=offers, bundle=b1))
    storage = live.state.storage
    assert storage.counts()["reports"] == 8400

    # Nothing is folded while the epoch can still take reports.
    clock.advance(86400)
    assert live.state.aggregate().folded == []
    clock.set((e0 + 2) * 86400 + 2 * 3600)  # past the window and the grace period
    result = live.state.aggregate()
    assert result.folded == [e0] and result.published == 2
    counts = storage.counts()
    assert counts["reports"] == 0  # raw reports deleted at the fold
    assert counts["nonces"] == 8400  # nonces kept for retries
    data = httpx.get(live.url + "/v1/bundle").content
    b2 = open_bundle(data, PUBLIC_KEY, now=clock.now(), current_version=1)
    assert b2.version == 2 and b2.expires > clock.now()
    assert b2.config.embedding_version == "content-1"  # only the root was tracked
    assert b2.segments.populations[BOOKS] >= 50 and b2.segments.populations[BOOKS_MOVIES] >= 50
    seg = httpx.get(live.url + "/v1/segments").json()
    assert seg["bundle_version"] == 2
    assert (
        seg["segments"][BOOKS]["usable"]
        and seg["segments"][BOOKS]["population"] == b2.segments.populations[BOOKS]
    )
    # Popular movie offers are now biased upwards.
    movies_idx = [B.catalog.index_of(o) for o in movie_offers]
    assert np.all(b2.catalog.bias[movies_idx] > B.catalog.bias[movies_idx] + 0.05)
    assert np.array_equal(b2.extras["extra_base_bias"], B.catalog.bias)

    # A retry of a report of the folded epoch is refused (the device dropped it too).
    late = device_reports(np.array([BOOKS]), epoch=e0, bundle=b2)
    r = httpx.post(
        live.url + "/v1/reports",
        content=batch_body(late),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["error"] == "epoch_window"

    # Second round: devices in books/movies engage with movie offers, devices at the root with
    # groceries; the segments are tracked now, so embeddings are learned.
    e1 = epoch_of(clock.now())
    grocery = [
        B.catalog.ids[i]
        for i in np.flatnonzero(B.catalog.category == B.taxonomy.index("groceries"))[:30]
    ]
    segs = np.array([BOOKS_MOVIES] * 1500 + [0] * 1500)
    offers = [movie_offers[i % 30] for i in range(1500)] + [grocery[i % 30] for i in range(1500)]
    post_all(live.url, device_reports(segs, epoch=e1, offers=offers, bundle=b2))
    clock.set((e1 + 2) * 86400 + 2 * 3600)
    result = live.state.aggregate()
    assert result.folded == [e1] and result.published == 3
    b3 = open_bundle(httpx.get(live.url + "/v1/bundle").content, PUBLIC_KEY, now=clock.now())
    assert b3.config.embedding_version.startswith("ppmi-svd-")
    movies = B.taxonomy.index("movies")
    assert b3.priors[BOOKS_MOVIES, movies] > b3.priors[0, movies]
    E = b3.catalog.embeddings
    gi = [B.catalog.index_of(o) for o in grocery]
    within = float(np.mean(E[movies_idx] @ E[movies_idx].T))
    across = float(np.mean(E[movies_idx] @ E[gi].T))
    assert within > across
    # Populations come from the census window (7 epochs): still published from round one.
    assert b3.segments.populations[BOOKS] >= 50

    # A device syncs and rebuilds on the new embedding space.
    engine = Engine.open(tmp_path / "dev.db", public_key=PUBLIC_KEY, clock=clock)
    with SyncClient(engine, live.url) as client:
        assert client.fetch_bundle().version == 3
    assert engine.bundle.config.embedding_version == b3.config.embedding_version

    # Nonces go after their retention (7 epochs); nothing else is left behind.
    clock.advance(9 * 86400)
    result = live.state.aggregate()
    assert result.purged_nonces == 8400 + 3000
    assert storage.counts()["nonces"] == 0


def test_retention_purges_old_sums_and_bundles(db_url: str, clock: FixedClock) -> None:
    from localrank.server.aggregate import AggregationSettings

    settings = AggregationSettings(window_epochs=1, keep_bundles=2)
    app = create_app(server_config(db_url, clock, aggregation=settings))
    with LiveServer(app) as server:
        e0 = epoch_of(clock.now())
        post_all(server.url, device_reports(np.arange(50), epoch=e0))
        clock.set((e0 + 2) * 86400 + 2 * 3600)
        assert server.state.aggregate().folded == [e0]
        storage = server.state.storage
        assert storage.counts()["sums"] == 1
        for _ in range(3):
            server.state.aggregate(force_publish=True)
        assert storage.counts()["bundles"] == 2
        assert storage.latest_bundle().version == 5  # type: ignore[union-attr]
        # Once no window reads epoch e0 any more (the census window is 7 epochs), its sums go.
        clock.advance(6 * 86400)
        server.state.aggregate()
        assert storage.counts()["sums"] == 1
        clock.advance(6 * 86400)
        server.state.aggregate()
        assert storage.counts()["sums"] == 0
        # Bundles past half their lifetime were republished on the way (7-day TTL), and still
        # only the latest two are kept.
        assert httpx.get(server.url + "/v1/bundle").headers["x-bundle-version"] == "7"
        assert storage.counts()["bundles"] == 2


def test_in_process_use_without_http(tmp_path: Path, clock: FixedClock) -> None:
    """The path docs/server.md gives the evaluation: ServerState without a socket."""
    from localrank.server.app import ServerState
    from localrank.server.ingest import IngestError
    from localrank.server.storage import open_storage

    config = server_config(f"sqlite:///{tmp_path / 'eval.db'}", clock)
    state = ServerState(config, open_storage(config.db))
    e0 = epoch_of(clock.now())
    reports = device_reports(np.arange(20), epoch=e0)
    assert state.ingest(batch_body(reports))["stored"] == 20
    assert state.ingest(batch_body(reports))["already_stored"] == 20
    with pytest.raises(IngestError) as refused:
        state.ingest(b"{")
    assert refused.value.status == 400
    clock.set((e0 + 2) * 86400 + 2 * 3600)
    result = state.aggregate()
    assert result.folded == [e0] and result.published == 2
    assert open_bundle(state.bundle()[1], PUBLIC_KEY, now=clock.now()).version == 2
    state.storage.close()


def test_the_no_noise_reference_keeps_exact_counts() -> None:
    """``AggregationSettings(noise=False)`` exists for the evaluation's k-anonymity-only
    reference: the fold then stores exact counts, and the estimates carry no noise variance."""
    epoch = 20000
    central = config_key("central", "none", None, None)
    rows = [
        ReportRow(
            f"{i:032x}", epoch, "engagement", central, BOOKS, None, B.catalog.ids[i % 3], "click"
        )
        for i in range(30)
    ]
    (row,) = fold_reports(rows, epoch=epoch, d_seg=D, parents=SEGS.parents, offers=B.catalog.ids,
                          tracked=np.array([0, BOOKS]), central_epsilon=1.0, report_limit=3,
                          noise=False)  # fmt: skip
    s = decode_sum(row)
    assert isinstance(s, EngagementSums)
    assert s.values.sum() == 30 and s.values[0, 1, 1] == 10 and np.count_nonzero(s.values) == 3
    eng = engagement(
        [s], offers=B.catalog.ids, d_seg=D, central_epsilon=1.0, report_limit=3, noise=False
    )
    assert np.all(eng.popularity_variance == 0) and eng.popularity[:3].tolist() == [10, 10, 10]


def test_the_server_aggregates_periodically(db_url: str, clock: FixedClock) -> None:
    import time

    app = create_app(server_config(db_url, clock, aggregate_every=0.2))
    with LiveServer(app) as server:
        e0 = epoch_of(clock.now())
        post_all(server.url, device_reports(np.arange(30), epoch=e0))
        clock.set((e0 + 2) * 86400 + 2 * 3600)
        deadline = time.monotonic() + 20
        version = "1"
        while version == "1" and time.monotonic() < deadline:
            time.sleep(0.1)
            version = httpx.get(server.url + "/v1/bundle").headers["x-bundle-version"]
        assert version == "2"
        assert server.state.storage.counts()["reports"] == 0
        assert (
            'localrank_aggregations_total{outcome="ok"}' in httpx.get(server.url + "/metrics").text
        )
