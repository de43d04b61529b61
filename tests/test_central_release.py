"""Central mode's continual release on the server, through the real aggregator and storage
(SQLite and PostgreSQL): exact counts wait for their release step, each step's noise is drawn
and stored once, and every publish re-reads the latest release instead of drawing afresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from localrank.bundle import open_bundle
from localrank.server.aggregate import AggregationSettings, Aggregator
from localrank.server.app import ServerState
from localrank.server.central_release import EXACT_KIND, latest_release
from localrank.server.storage import ReleaseRow, open_storage
from localrank.shared.clock import FixedClock, epoch_of
from localrank.wire.reports import batch_body, engagement

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import KEY, PUBLIC_KEY, base_bundle, server_config  # noqa: E402

pytest_plugins = ["server_fixtures"]

DAY = 86400
#: A release every 2 epochs over 20 days (10 releases), so a test sees several steps.
CENTRAL: dict[str, Any] = {
    "mode": "central",
    "epsilon": 0.1,
    "census_interval_days": 30,
    "central_cadence_days": 2,
    "central_history_days": 20,
}


def _state(db_url: str, clock: FixedClock, tmp_path: Path, noise: bool) -> ServerState:
    bundle = base_bundle(tmp_path / "central.bundle", **CENTRAL)
    config = server_config(
        db_url, clock, base_bundle=bundle, aggregation=AggregationSettings(noise=noise)
    )
    return ServerState(config, open_storage(config.db))


def _clicks(state: ServerState, epoch: int, offers: list[str], segment: int = 0) -> None:
    reports = [
        engagement(epoch=epoch, mode="central", oracle="none", epsilon=None, epsilon_perm=None,
                   value=segment, offer=o, event="click")
        for o in offers
    ]  # fmt: skip
    assert state.ingest(batch_body(reports))["stored"] == len(reports)


def _close(clock: FixedClock, epoch: int) -> None:
    """Move the clock so that every epoch below ``epoch`` is closed (and ``epoch`` is not)."""
    clock.set((epoch + 1) * DAY + 2 * 3600)


def test_counts_wait_for_their_step_and_are_released_all_time(
    db_url: str, tmp_path: Path
) -> None:
    """Without noise (the evaluation's reference), the releases are the exact all-time counts,
    one per 2-epoch step; before its step is due nothing central is published."""
    clock = FixedClock(1_790_000_000.0)
    state = _state(db_url, clock, tmp_path, noise=False)
    ids = state.aggregator.current_bundle().catalog.ids
    e0 = epoch_of(clock.now())
    _clicks(state, e0, [ids[0]] * 5 + [ids[1]] * 2)
    _close(clock, e0 + 1)  # e0 closed, e0 + 1 still open: the step [e0, e0 + 1] is not due
    first = state.aggregate()
    assert first.folded == [e0] and first.released == [] and first.published is not None
    assert latest_release(state.storage) is None
    kinds = {r.kind for r in state.storage.sums(e0, e0)}
    assert kinds == {EXACT_KIND}
    published = open_bundle(state.bundle()[1], PUBLIC_KEY, now=clock.now())
    base = published.extras["extra_base_bias"]
    assert np.array_equal(published.catalog.bias, base)  # no popularity from exact counts

    _clicks(state, e0 + 1, [ids[0]] * 3)
    _close(clock, e0 + 2)
    assert state.aggregate().released == [(1, 1)]
    release = latest_release(state.storage)
    assert release is not None and release.variance == 0.0
    assert (release.first_epoch, release.through_epoch) == (e0, e0 + 1)
    click = 1
    assert release.counts[0, click, 0] == 8 and release.counts[1, click, 0] == 2
    assert release.counts.sum() == 10
    published = open_bundle(state.bundle()[1], PUBLIC_KEY, now=clock.now())
    assert published.catalog.bias[0] > base[0] and published.catalog.bias[1] > base[1]

    # two steps later: all-time counts, and the step with no reports released too
    _clicks(state, e0 + 2, [ids[1]] * 4)
    _close(clock, e0 + 6)
    assert state.aggregate().released == [(1, 2), (1, 3)]
    release = latest_release(state.storage)
    assert release is not None and release.through_epoch == e0 + 5
    assert release.counts[0, click, 0] == 8 and release.counts[1, click, 0] == 6
    state.storage.close()


def test_each_step_is_noised_once_and_republished_unchanged(
    db_url: str, tmp_path: Path
) -> None:
    clock = FixedClock(1_790_000_000.0)
    state = _state(db_url, clock, tmp_path, noise=True)
    ids = state.aggregator.current_bundle().catalog.ids
    e0 = epoch_of(clock.now())
    _clicks(state, e0, [ids[0]] * 40)
    _close(clock, e0 + 2)
    assert state.aggregate().released == [(1, 1)]
    row = state.storage.latest_release()
    release = latest_release(state.storage)
    assert row is not None and release is not None
    # noise everywhere: the counts are not the truth, and every cell carries the variance
    # the published guarantee implies
    guarantee = state.aggregator.current_bundle().config.central_guarantee
    assert guarantee is not None
    assert release.variance == pytest.approx(guarantee.sigma_counts**2 + 1 / 12, rel=1e-3)
    assert np.count_nonzero(release.counts) > release.counts.size // 2
    v2 = open_bundle(state.bundle()[1], PUBLIC_KEY, now=clock.now())

    # republishing, from this worker or a fresh one, draws no new noise
    again = state.aggregate(force_publish=True)
    assert again.released == [] and again.published == v2.version + 1
    v3 = open_bundle(state.bundle()[1], PUBLIC_KEY, now=clock.now())
    assert np.array_equal(v3.catalog.bias, v2.catalog.bias)
    fresh = Aggregator(state.storage, KEY.read_bytes(), clock=clock)
    assert fresh.run(force_publish=True).released == []
    assert state.storage.latest_release() == row
    v4 = open_bundle(state.storage.latest_bundle().data, PUBLIC_KEY, now=clock.now())  # type: ignore[union-attr]
    assert np.array_equal(v4.catalog.bias, v2.catalog.bias)

    # a step is stored once: a second worker's draw for the same step is refused
    duplicate = ReleaseRow(row.series, row.step, row.first_epoch, clock.now(), b"other noise")
    assert state.storage.add_release(duplicate) is False
    assert state.storage.latest_release() == row
    state.storage.close()


def test_a_used_up_horizon_starts_new_counters_that_carry_the_old_counts(
    db_url: str, tmp_path: Path
) -> None:
    """History 4 days at a release every 2: two releases per series. The third step starts
    series 2, which carries series 1's final (already published) counts."""
    clock = FixedClock(1_790_000_000.0)
    bundle = base_bundle(tmp_path / "short.bundle", **{**CENTRAL, "central_history_days": 4})
    config = server_config(
        db_url, clock, base_bundle=bundle, aggregation=AggregationSettings(noise=False)
    )
    state = ServerState(config, open_storage(config.db))
    ids = state.aggregator.current_bundle().catalog.ids
    e0 = epoch_of(clock.now())
    for day, n in ((0, 3), (2, 4), (4, 5)):
        clock.set((e0 + day) * DAY + 3600)
        _clicks(state, e0 + day, [ids[2]] * n)
    _close(clock, e0 + 6)
    assert state.aggregate().released == [(1, 1), (1, 2), (2, 1)]
    release = latest_release(state.storage)
    assert release is not None and (release.series, release.step) == (2, 1)
    assert release.first_epoch == e0 + 4 and release.through_epoch == e0 + 5
    assert release.counts[2, 1, 0] == 3 + 4 + 5  # all-time, across the two series
    state.storage.close()


def test_statistics_use_the_release_variance_for_central_counts() -> None:
    """A release's counts carry the mechanism's variance into the estimates, not the per-epoch
    Laplace variance of the first design."""
    from localrank.server.central_release import CentralRelease
    from localrank.server.statistics import EVENT_WEIGHTS, engagement
    from localrank.server.sums import EVENTS

    offers = ("a", "b")
    segments = np.array([0, 3], dtype=np.int64)
    counts = np.zeros((2, len(EVENTS), 2), dtype=np.int64)
    counts[0, 1, 1] = 7
    release = CentralRelease(1, 1, 100, 129, offers, segments, counts, variance=1500.0)
    eng = engagement([release.as_sums()], offers=offers, d_seg=10, central_epsilon=1.0,
                     report_limit=3, central_noise_variance=release.variance)  # fmt: skip
    w2 = sum(EVENT_WEIGHTS[e] ** 2 for e in EVENTS)
    assert np.allclose(eng.variance, 1500.0 * w2)
    assert np.allclose(eng.popularity_variance, 2 * 1500.0 * w2)  # two segments per offer
    assert eng.scores[0, 1] == 7 * EVENT_WEIGHTS["click"]
