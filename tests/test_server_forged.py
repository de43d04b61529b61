"""Forged reports (issue 13, findings 1-3): what ingest refuses, what aggregation survives, and
how far well-formed forged reports can move a published population or prior.

Statistics use the real chained oracle of the demo bundle (OUE, ε = 2, ε_perm = 4, d_seg =
1650), the real ingest (``parse_batch``), the real fold and the real estimators. Where a claim
compares "with forged reports" against "the genuine reports alone", both are folded without
noise (``noise=False``): that is the coupling the bound in docs/privacy-math.md is stated for.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from localrank.bundle import build_bundle, open_bundle
from localrank.privacy import oracles as ldp
from localrank.server.app import ServerState, create_app
from localrank.server.debias import oue_report_cap
from localrank.server.ingest import IngestRules, config_key, parse_batch
from localrank.server.statistics import category_priors, populations
from localrank.server.statistics import engagement as engagement_estimate
from localrank.server.storage import ReportRow, SumRow, open_storage
from localrank.server.sums import decode_sum, fold_reports, subtree_counts
from localrank.shared.clock import FixedClock, epoch_of
from localrank.wire.reports import batch_body, census, engagement, new_nonce

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import (  # noqa: E402
    KEY,
    PUBLIC_KEY,
    LiveServer,
    base_bundle,
    demo_bundle,
    device_reports,
    server_config,
)

pytest_plugins = ["server_fixtures"]

B = demo_bundle()
SEGS = B.segments
D = SEGS.d_seg
MIN = B.config.min_population
TARGET = SEGS.id_of("groceries/food-and-drink/gh-gcp")  # the leaf
ORDER = np.argsort(-np.array([SEGS.depth_of(s) for s in range(D)]), kind="stable")
P, Q = ldp.effective_probabilities("oue", D, 2.0, 4.0)
OUE = config_key("ldp", "oue", 2.0, 4.0)


def _post(url: str, reports: list[dict[str, Any]]) -> httpx.Response:
    body = json.dumps({"schema": "localrank.batch/1", "reports": reports}).encode()
    return httpx.post(
        url + "/v1/reports", content=body, headers={"Content-Type": "application/json"}
    )


def _grr(kind: str, epoch: int, eps: float, perm: float, segment: int) -> dict[str, Any]:
    if kind == "census":
        return census(epoch=epoch, oracle="grr", epsilon=eps, epsilon_perm=perm, value=segment)
    return engagement(epoch=epoch, mode="ldp", oracle="grr", epsilon=eps, epsilon_perm=perm,
                      value=segment, offer=B.catalog.ids[0], event="purchase")  # fmt: skip


def _oue(epoch: int, bits: np.ndarray, eps: float = 2.0, perm: float = 4.0) -> dict[str, Any]:
    packed = np.packbits(bits.astype(np.uint8), bitorder="little")
    value = base64.b64encode(packed.tobytes()).decode()
    return census(epoch=epoch, oracle="oue", epsilon=eps, epsilon_perm=perm, value=value)


@pytest.fixture
def server(tmp_path: Path, clock: FixedClock) -> Iterator[LiveServer]:
    with LiveServer(create_app(server_config(f"sqlite:///{tmp_path / 's.db'}", clock))) as s:
        yield s


# -- finding 1 and 2: ingest ---------------------------------------------------------------


def test_reports_outside_the_published_configuration_are_refused_naming_the_field(
    server: LiveServer, clock: FixedClock
) -> None:
    e = epoch_of(clock.now())
    deep = SEGS.id_of("pets/kids/gh-u09")
    top = SEGS.id_of("books")
    zeros = np.zeros(D, dtype=bool)
    cases = [
        # finding 1: the degenerate ε's that stopped aggregation, as GRR (not the published
        # census oracle) and as OUE (the published oracle, a degenerate ε)
        ("GRR census at 1e-300", _grr("census", e, 1e-300, 1e-300, deep), "oracle"),
        ("GRR census at 1e-300, depth 1", _grr("census", e, 1e-300, 1e-300, top), "oracle"),
        ("OUE census at 1e-300", _oue(e, zeros, 1e-300, 1e-300), "epsilon"),
        ("GRR engagement at 1e-9", _grr("engagement", e, 1e-9, 1e-9, 0), "oracle"),
        # finding 2: devices send census with OUE; a GRR census at the published ε's is forged
        ("GRR census at 2/4", _grr("census", e, 2.0, 4.0, TARGET), "oracle"),
        # finding 3: a GRR engagement at ε = 0.3 for the root
        ("GRR engagement at 0.3", _grr("engagement", e, 0.3, 0.3, 0), "oracle"),
        ("ε above the bundle's", _oue(e, zeros, 3.0, 4.0), "epsilon"),
        ("ε below the bundle's", _oue(e, zeros, 1.0, 4.0), "epsilon"),
        ("ε_perm not the bundle's", _oue(e, zeros, 2.0, 8.0), "epsilon_perm"),
        ("central engagement in an LDP bundle", engagement(
            epoch=e, mode="central", oracle="none", epsilon=None, epsilon_perm=None, value=0,
            offer=B.catalog.ids[0], event="click"), "mode"),
    ]  # fmt: skip
    genuine = device_reports(np.array([TARGET]), epoch=e)[0]
    for name, forged, field in cases:
        r = _post(server.url, [genuine, forged])
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"] == field, (name, r.json())
        assert f"reports/1/{field}" in r.json()["detail"], (name, r.json())
    assert server.state.storage.counts()["reports"] == 0
    # The genuine report alone is stored.
    assert _post(server.url, [genuine]).status_code == 200


def test_a_central_segment_must_be_one_the_bundle_published_as_usable(
    tmp_path: Path, clock: FixedClock
) -> None:
    """Finding 2's k-anonymity hole: in central mode the segment travels in the clear."""
    usable = SEGS.id_of("books")
    pops = np.full(D, -1)
    pops[0], pops[usable], pops[SEGS.id_of("books/movies")] = 500, 120, MIN - 1
    path = tmp_path / "central.bundle"
    # the first central design: its census is the ldp one, which device_reports sends
    legacy = base_bundle(path, mode="central", central_mechanism="epoch-laplace")
    data = open_bundle(legacy.read_bytes(), PUBLIC_KEY, now=-math.inf)
    path.write_bytes(build_bundle(
        catalog=data.catalog, taxonomy=data.taxonomy, config=data.config, version=1,
        created=data.created, expires=data.expires, signing_key=KEY.read_bytes(),
        populations=pops,
    ))  # fmt: skip
    config = server_config(f"sqlite:///{tmp_path / 'c.db'}", clock, base_bundle=path)
    with LiveServer(create_app(config)) as server:
        e = epoch_of(clock.now())

        def central(segment: int) -> dict[str, Any]:
            return engagement(epoch=e, mode="central", oracle="none", epsilon=None,
                              epsilon_perm=None, value=segment, offer=B.catalog.ids[0],
                              event="click")  # fmt: skip

        for segment in (SEGS.id_of("books/movies"), TARGET, D - 1):
            r = _post(server.url, [central(segment)])
            assert r.status_code == 422 and r.json()["error"] == "segment", r.text
            assert "usable" in r.json()["detail"]
        assert _post(server.url, [central(usable), central(0)]).status_code == 200
        # The census in a central bundle is still LDP, through the published oracle only.
        r = _post(server.url, [_grr("census", e, 2.0, 4.0, TARGET)])
        assert r.status_code == 422 and r.json()["error"] == "oracle"
        assert _post(server.url, device_reports(np.array([TARGET]), epoch=e)).status_code == 200


def test_reports_made_under_an_earlier_bundle_inside_the_window_are_accepted(
    tmp_path: Path, clock: FixedClock, server: LiveServer
) -> None:
    """A device that has not fetched the newest bundle yet is not refused; once that bundle
    has expired before the window began, its configuration is."""
    e = epoch_of(clock.now())
    old = device_reports(np.array([TARGET]), epoch=e)
    v1 = open_bundle(server.state.storage.latest_bundle().data, PUBLIC_KEY, now=-math.inf)  # type: ignore[union-attr]
    v2 = build_bundle(
        catalog=v1.catalog, taxonomy=v1.taxonomy, config=replace(v1.config, epsilon=3.0),
        version=2, created=clock.now(), expires=clock.now() + 7 * 86400,
        signing_key=KEY.read_bytes(),
    )  # fmt: skip
    from localrank.server.storage import BundleRow

    opened = open_bundle(v2, PUBLIC_KEY, now=clock.now())
    assert server.state.storage.add_bundle(BundleRow(2, opened.digest, clock.now(), v2))
    server.state.bundle(fresh=True)
    new = device_reports(np.array([TARGET]), epoch=e, bundle=opened)
    expired_v1 = v1.expires < (e - 1) * 86400
    r = _post(server.url, old)
    assert r.status_code == (422 if expired_v1 else 200), r.text
    assert _post(server.url, new).status_code == 200


# -- finding 1: stored poison never stops publishing ---------------------------------------


def test_poisoned_rows_stored_by_an_older_server_do_not_stop_publishing(
    tmp_path: Path, clock: FixedClock
) -> None:
    config = server_config(f"sqlite:///{tmp_path / 'p.db'}", clock)
    state = ServerState(config, open_storage(config.db))
    e0 = epoch_of(clock.now())
    genuine = device_reports(np.arange(200) % 40, epoch=e0)
    assert state.ingest(batch_body(genuine))["stored"] == 200
    top = SEGS.id_of("books")
    poison = [
        ("census", config_key("ldp", "grr", 1e-300, 1e-300), SEGS.id_of("pets/kids/gh-u09"),
         None, None),
        ("census", config_key("ldp", "grr", 1e-300, 1e-300), top, None, None),
        ("engagement", config_key("ldp", "grr", 1e-9, 1e-9), 0, B.catalog.ids[0], "click"),
        ("census", config_key("ldp", "grr", 2.0, 4.0), TARGET, None, None),
        ("census", "ldp:oue:nan:4.0", None, None, None),
        ("census", "not a configuration", 3, None, None),
    ]  # fmt: skip
    rows = [
        ReportRow(new_nonce(), e0, kind, cfg, seg, None, offer, event)
        for kind, cfg, seg, offer, event in poison
    ]
    # As an older server stored them: straight into storage, past today's ingest checks.
    state.storage.store_reports(rows, closed_before=0)
    # And a poisoned partial sum of an earlier epoch, folded by such a server.
    support = np.zeros(D, dtype=np.int64)
    support[top] = 1
    from localrank.server.sums import _blob

    bad_sum = SumRow(e0 - 1, config_key("ldp", "grr", 1e-300, 1e-300), "census", "old", 1,
                     _blob(support=support))  # fmt: skip
    garbage = SumRow(e0 - 1, OUE, "census", "garbled", 1, b"not an npz")
    assert state.storage.fold(e0 - 1, [bad_sum, garbage], clock.now(), delete_raw=True)
    clock.set((e0 + 2) * 86400 + 2 * 3600)
    result = state.aggregate()
    assert result.folded == [e0] and result.published == 2
    b2 = open_bundle(state.bundle()[1], PUBLIC_KEY, now=clock.now())
    pops = b2.segments.populations
    assert pops[0] == result.census_reports and 150 < pops[0] < 250
    assert pops.max() <= pops[0]  # no 8.7e18
    assert np.all(np.isfinite(b2.priors))
    state.storage.close()


# -- finding 2: f forged well-formed census reports ----------------------------------------


def _strongest_forgery(target: int, cap: np.ndarray) -> np.ndarray:
    """An OUE report that adds as much as the fold lets it to ``target`` and its ancestors:
    the target's bit, then leaves of its depth-1 subtree while every subtree stays within
    its cap."""
    bits = np.zeros(D, dtype=np.int64)
    bits[target] = 1
    top = target
    while SEGS.parents[top] != 0:
        top = int(SEGS.parents[top])
    for s in range(D):
        if s == target or not SEGS.paths[s].startswith(SEGS.paths[top]):
            continue
        bits[s] = 1
        if np.any(subtree_counts(bits, SEGS.parents, ORDER) > cap):
            bits[s] = 0
    return bits.astype(bool)


def _rows(reports: list[dict[str, Any]], epoch: int) -> list[ReportRow]:
    rules = IngestRules.from_bundles([B])
    out: list[ReportRow] = []
    for i in range(0, len(reports), 256):
        out += parse_batch(batch_body(reports[i : i + 256]), rules, epoch)
    return out


def _pops(rows: list[ReportRow], epoch: int, noise: bool) -> Any:
    sums = fold_reports(rows, epoch=epoch, d_seg=D, parents=SEGS.parents, offers=B.catalog.ids,
                        tracked=np.array([0]), central_epsilon=1.0, report_limit=3,
                        noise=noise)  # fmt: skip
    return populations([decode_sum(s) for s in sums], parents=SEGS.parents, min_population=MIN,  # type: ignore[misc]
                       central_epsilon=1.0, noise=noise)  # fmt: skip


EPOCH = 20000
CAP = oue_report_cap(subtree_counts(np.ones(D, dtype=np.int64), SEGS.parents, ORDER), Q)
FORGED = _strongest_forgery(TARGET, CAP)


@pytest.fixture(scope="module")
def genuine_rows() -> list[ReportRow]:
    """5,000 genuine devices (the issue's scenario), none of them in the target's region."""
    rng = np.random.default_rng(13)
    far = np.array([s for s in range(D) if not SEGS.paths[s].startswith("groceries")])
    return _rows(device_reports(rng.choice(far, size=5000), epoch=EPOCH), EPOCH)


def test_five_forged_census_reports_never_publish_a_segment_below_min_population(
    genuine_rows: list[ReportRow],
) -> None:
    naive = np.zeros(D, dtype=bool)
    naive[[s for s in range(D) if SEGS.paths[s].startswith("groceries")]] = True
    for f in range(1, 6):
        forged = _rows([_oue(EPOCH, FORGED) for _ in range(f)]
                       + [_oue(EPOCH, naive) for _ in range(f)], EPOCH)  # fmt: skip
        for noise in (False, True):
            with_forged = _pops(genuine_rows + forged, EPOCH, noise)
            assert with_forged.published[TARGET] < 0, (f, noise)
            assert with_forged.published[SEGS.parents[TARGET]] < 0, (f, noise)
        # Coupled (no noise): nothing is published that the genuine reports alone would not.
        alone = _pops(genuine_rows, EPOCH, noise=False)
        extra = (with_forged.published >= 0) & (alone.published < 0)
        assert not np.any(extra), np.flatnonzero(extra)
        # The empty server: the forged reports alone publish nothing but the root.
        empty = _pops(forged, EPOCH, noise=True)
        assert np.flatnonzero(empty.published >= 0).tolist() == [0], f
        # The naive forgery (every bit of a depth-1 subtree) is over the cap and dropped.
        only_naive = _pops(_rows([_oue(EPOCH, naive) for _ in range(f)], EPOCH), EPOCH, False)
        assert only_naive.reports == 0


@pytest.mark.parametrize("f", [20, 80])
def test_the_movement_of_f_forged_census_reports_stays_within_the_formula(
    genuine_rows: list[ReportRow], f: int
) -> None:
    forged = _rows([_oue(EPOCH, FORGED) for _ in range(f)], EPOCH)
    alone = _pops(genuine_rows, EPOCH, noise=False)
    moved = _pops(genuine_rows + forged, EPOCH, noise=False)
    delta = moved.influence
    assert delta is not None
    size = subtree_counts(np.ones(D, dtype=np.int64), SEGS.parents, ORDER)
    shift = moved.estimate - alone.estimate
    # Up by at most f·δ_A; down (a report without bits in A) by at most f·|A|·q/(p − q).
    assert np.all(shift[1:] <= f * delta[1:] + 1e-6)
    assert np.all(shift[1:] >= -f * size[1:] * Q / (P - Q) - 1e-6)
    assert shift[0] == f  # the root's population is the number of reports
    # The forgery reaches its bound on the target: the bound is tight, not decorative.
    assert shift[TARGET] == pytest.approx(f * delta[TARGET])
    # A segment published only because of the forgery had a genuine estimate within f·δ of
    # clearing the threshold: F·δ of margin absorbs F forged reports.
    extra = np.flatnonzero((moved.published >= 0) & (alone.published < 0))
    for s in extra:
        assert alone.lower[s] + f * delta[s] >= MIN - 1e-6


# -- finding 3: one forged engagement and the priors --------------------------------------


def _priors(rows: list[ReportRow], tracked: np.ndarray, published: np.ndarray) -> np.ndarray:
    sums = fold_reports(rows, epoch=EPOCH, d_seg=D, parents=SEGS.parents, offers=B.catalog.ids,
                        tracked=tracked, central_epsilon=1.0, report_limit=3, noise=False)
    eng = engagement_estimate([decode_sum(s) for s in sums], offers=B.catalog.ids, d_seg=D,  # type: ignore[misc]
                              central_epsilon=1.0, report_limit=3, noise=False,
                              parents=SEGS.parents)  # fmt: skip
    return category_priors(
        eng, primary=B.catalog.category, sensitive_categories=B.taxonomy.sensitive_mask,
        parents=SEGS.parents, published=published, prior_strength=50.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("oracle", "eps", "perm"), [("grr", 0.3, 0.3), ("grr", 0.3, None), ("oue", 2.0, 4.0)]
)
@pytest.mark.parametrize("f", [1, 5, 40])
def test_forged_engagement_moves_a_prior_by_at_most_depth_plus_one_times_f_over_k(
    oracle: str, eps: float, perm: float | None, f: int
) -> None:
    """The issue's case is one GRR conversion at ε = 0.3 for the root, which took a category's
    prior to 0.85; here a category's prior moves by at most (depth + 1)·f/k, k = 50."""
    books = SEGS.id_of("books")
    tracked = np.array([0, books, SEGS.id_of("books/movies")])
    published = np.full(D, -1)
    published[tracked] = 1000
    groceries = B.taxonomy.index("groceries")
    offer = B.catalog.ids[int(np.flatnonzero(B.catalog.category == groceries)[0])]
    cfg = config_key("ldp", oracle, eps, perm)
    if oracle == "grr":
        forged = [ReportRow("", EPOCH, "engagement", cfg, 0, None, offer, "conversion")] * f
    else:
        cap = oue_report_cap(np.array([3]), Q)[0]
        bits = np.zeros(D, dtype=bool)
        bits[tracked[:cap]] = True
        packed = np.packbits(bits, bitorder="little").tobytes()
        forged = [ReportRow("", EPOCH, "engagement", cfg, None, packed, offer, "conversion")] * f
    baseline = _priors([], tracked, published)
    moved = _priors(forged, tracked, published)
    for s, depth in ((0, 0), (books, 1)):
        change = np.abs(moved[s] - baseline[s]).max()
        assert change <= (depth + 1) * f / 50 + 1e-6, (s, change)
    assert moved[0, groceries] > baseline[0, groceries]  # it does move: the bound is the point
    if f == 1:
        assert moved[0, groceries] < 0.1  # was 0.85 before
