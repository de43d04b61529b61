"""Popularity of a small ``ldp`` fleet survives the server: reports made with the real chained
oracle, the real ingest and the real aggregation (fold, noise, estimates, publish), and the
published bias read back from the signed bundle.

In ``ldp`` mode the offer travels in the clear, so popularity must not be lost. It used to
come from the noised counts ``ñ`` alone: discrete Laplace noise (central ε = 1, sensitivity
L = 3, variance ≈ 17.8) on every offer and event in every folded epoch. Over a 28-epoch
window that is a standard deviation of ≈ 67 in weighted engagements on *every* offer of the
catalog, so 100 conversions (200) sat within 3σ of the noise, and about one unengaged offer in
40 of the 2,000 cleared the 95% lower bound by luck. The supports over the tracked segments
carry the same counts without that noise (``estimate.engagement``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localrank.bundle import open_bundle
from localrank.privacy import oracles as ldp
from localrank.server.app import ServerState
from localrank.server.storage import open_storage
from localrank.shared.clock import FixedClock, epoch_of
from localrank.wire.reports import batch_body, engagement

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import PUBLIC_KEY, T0, base_bundle, server_config  # noqa: E402

EPOCHS = 28  # the default window: every epoch folded, each with its own noise draw


def _fleet_reports(bundle_path: Path, epoch0: int) -> tuple[dict[int, list[dict]], dict[str, int]]:
    """300 devices at the root (nothing is published yet, so that is their active segment),
    each with its permanent response memoised once, as a device does. Every device converts on
    offer A; devices 0–99, 100–199 and 200–299 also on B0, B1, B2. At most two reports a day
    per device (L = 3), spread over the window. Returns the reports per epoch and the truth."""
    b = open_bundle(bundle_path.read_bytes(), PUBLIC_KEY, now=T0)
    c, d = b.config, b.segments.d_seg
    r = ldp.Randomizer.for_domain(d, c.epsilon, c.epsilon_perm)
    ids = b.catalog.ids
    truth = {ids[0]: 300, ids[1]: 100, ids[2]: 100, ids[3]: 100}
    rng = np.random.default_rng(7)
    by_epoch: dict[int, list[dict]] = {}
    for device in range(300):
        memo = r.permanent(np.array([0]))  # the root, once per device
        offers = [ids[0], ids[1 + device // 100]]
        days = rng.choice(EPOCHS, size=len(offers), replace=False)
        for offer, day in zip(offers, days, strict=True):
            value = r.instantaneous(memo)
            wire: int | str = (
                ldp.encode_bits(value[0]) if r.oracle is ldp.Oracle.OUE else int(value[0])
            )
            by_epoch.setdefault(epoch0 + int(day), []).append(
                engagement(
                    epoch=epoch0 + int(day), mode="ldp", oracle=r.oracle.value,
                    epsilon=c.epsilon, epsilon_perm=c.epsilon_perm, value=wire, offer=offer,
                    event="purchase",
                )
            )  # fmt: skip
    return by_epoch, truth


def test_a_small_ldp_fleets_popularity_survives_aggregation(tmp_path: Path) -> None:
    """The published popularity (the bias less the catalog's own) orders A above every B and
    every B above every offer nobody engaged with, and gives those none at all.

    Why these margins hold (GRR over the 18 depth-1 segments, ε = 2, ε_perm = 4: p* = 0.241):
    a report lands on the tracked root with probability p*, so B's support is Binomial(100,
    0.241), mean 24, sd 4.3, and A's Binomial(300, 0.241), mean 72, sd 7.4. A below a B needs a
    gap of 48 to close, 5.6σ of the difference; a B whose lower bound reaches 0 needs a support
    ≤ 3 (probability ~1e-7). An unengaged offer has no support and keeps ≈ 3e-3 of its ñ
    (the blend's weight against one report's variance): its lower bound stays 0."""
    path = base_bundle(tmp_path / "base.bundle", segment_depth=1)
    clock = FixedClock(T0)
    config = server_config(f"sqlite:///{tmp_path / 'server.db'}", clock, base_bundle=path)
    state = ServerState(config, open_storage(config.db))
    e0 = epoch_of(T0)
    by_epoch, truth = _fleet_reports(path, e0)
    for epoch in range(e0, e0 + EPOCHS):
        clock.set(epoch * 86400 + 12 * 3600)
        reports = by_epoch.get(epoch, [])
        for i in range(0, len(reports), 256):
            state.ingest(batch_body(reports[i : i + 256]))
    clock.set((e0 + EPOCHS + 1) * 86400 + 2 * 3600)
    result = state.aggregate()
    assert result.published is not None and len(result.folded) == EPOCHS
    b = open_bundle(state.bundle()[1], PUBLIC_KEY, now=clock.now())
    state.storage.close()

    popular = b.catalog.bias - b.extras["extra_base_bias"]
    row = {o: i for i, o in enumerate(b.catalog.ids)}
    a, bs = row[b.catalog.ids[0]], [row[o] for o in list(truth)[1:]]
    rest = np.setdiff1d(np.arange(len(b.catalog)), [a, *bs])
    assert b.oracle == "grr" and b.segments.d_seg == 18
    assert popular[a] > max(popular[bs]), (popular[a], popular[bs])
    assert min(popular[bs]) > 0, popular[bs]
    assert np.all(popular[rest] == 0), (np.count_nonzero(popular[rest]), popular[rest].max())
