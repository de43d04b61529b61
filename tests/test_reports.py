"""What leaves the device: the wire contract, consent, budgets, L, memos, the outbox."""

from __future__ import annotations

import base64
import json
import math
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localrank.device.reports import validate_batch, validate_report
from localrank.shared.clock import epoch_of
from localrank.wire.reports import EVENT_ON_WIRE, schema_document
from report_fixtures import CENTRAL, T0, open_engine, plain_offers, sensitive_offers

DAY = 86400.0


def drain(engine, clock, days: int) -> list[dict]:
    """Send every due batch for ``days`` epochs; returns every report that left."""
    sent: list[dict] = []
    for _ in range(days):
        while (batch := engine.take_batch()) is not None:
            validate_batch(json.loads(batch.body))
            sent.extend(batch.reports)
            engine.acknowledge(batch, destination="test://server")
        clock.advance(DAY)
    return sent


def test_reports_match_the_closed_schema_exactly(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path)
    for o in plain_offers(engine, 5):
        engine.record("purchase", context="shopping", offer=o, now=T0 - 3600)
    reports = drain(engine, clock, 3)
    assert {r["kind"] for r in reports} == {"census", "engagement"}
    for r in reports:
        validate_report(r)
        allowed = set(schema_document("report.v1.json")["properties"])
        assert set(r) <= allowed
        assert r["schema"] == "localrank.report/1"
        if r["kind"] == "engagement":
            assert r["event"] == "conversion"  # a purchase is a conversion on the wire
    # the schema is closed: any extra field is refused
    with pytest.raises(ValueError, match="Additional properties"):
        validate_report({**reports[0], "device_id": "abc"})


def test_every_event_kind_maps_as_designed(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, report_limit=10, epoch_epsilon=50.0, window_epsilon=200.0)
    o = plain_offers(engine, 1)[0]
    for kind in ("impression", "click", "purchase", "dismiss"):
        engine.record(kind, context="shopping", offer=o, now=T0 - 60)
    engine.record("view", context="news", offer=o, now=T0 - 60)
    engine.record("visit", context="navigation", location=(51.5, -0.12), now=T0 - 60)
    engine.record("app_use", context="game", category="games", now=T0 - 60)
    events = [r["event"] for r in drain(engine, clock, 1) if r["kind"] == "engagement"]
    assert sorted(events) == sorted(EVENT_ON_WIRE.values())  # views, visits, app use stay


def test_no_report_without_consent_or_at_level_off(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, reporting=False)
    offers = plain_offers(engine, 6)
    for o in offers[:3]:
        engine.record("click", context="shopping", offer=o, now=T0 - 60)
    assert engine.take_batch() is None
    assert engine.outbox(include_pending=True) == []
    assert "consent is off" in engine.reporting_status().reason
    # consent given: only events recorded from now on may be reported
    engine.update_settings(reporting=True)
    engine.record("click", context="shopping", offer=offers[3], now=T0)
    sent = [r for r in drain(engine, clock, 2) if r["kind"] == "engagement"]
    assert [r["offer"] for r in sent] == [offers[3]]
    # level off: nothing, not even a census
    engine.update_settings(level="off")
    engine.record("click", context="shopping", offer=offers[4], now=clock.now())
    assert engine.take_batch() is None
    assert "personalisation is off" in engine.reporting_status().reason


def test_withdrawing_consent_drops_everything_unsent(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path)
    for o in plain_offers(engine, 3):
        engine.record("click", context="shopping", offer=o, now=T0 - 60)
    batch = engine.take_batch()
    assert batch is not None  # made, not yet acknowledged
    engine.update_settings(reporting=False)
    assert engine.outbox(include_pending=True) == []
    engine.update_settings(reporting=True)
    # the ε of the dropped reports stays spent: today's budget is gone
    assert engine.take_batch() is None
    assert any("epoch budget" in s for s in engine.last_report_stops)
    clock.advance(DAY)
    assert engine.take_batch() is not None  # a census again, but no old engagement
    assert all(r.kind == "census" for r in engine.outbox(include_pending=True))


def test_sensitive_offers_are_never_reported(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path)
    bad = set(sensitive_offers(engine, 5))
    engine.update_settings(sensitive_opt_ins=["health", "pharmacy", "gambling"])
    for o in bad:
        for kind in ("impression", "click", "purchase"):
            engine.record(kind, context="health", offer=o, now=T0 - 60)
    reports = drain(engine, clock, 10)
    assert reports, "a census is still expected"
    assert all(r["kind"] == "census" for r in reports)
    assert not any(o in json.dumps(reports) for o in bad)


def test_at_most_l_engagements_per_epoch_and_the_rest_wait(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, report_limit=3)
    offers = plain_offers(engine, 8)
    for o in offers:
        engine.record("click", context="shopping", offer=o, now=T0 - 60)
    per_epoch: dict[int, int] = {}
    order = []
    for r in drain(engine, clock, 4):
        if r["kind"] == "engagement":
            per_epoch[r["epoch"]] = per_epoch.get(r["epoch"], 0) + 1
            order.append(r["offer"])
    assert list(per_epoch.values()) == [3, 3, 2]
    assert sorted(order) == sorted(offers)  # every event reported once, none lost
    assert list(per_epoch) == [epoch_of(T0), epoch_of(T0) + 1, epoch_of(T0) + 2]


def test_census_at_most_once_per_seven_days(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path)
    censuses = [r for r in drain(engine, clock, 15) if r["kind"] == "census"]
    epochs = [r["epoch"] for r in censuses]
    assert epochs == [epoch_of(T0), epoch_of(T0) + 7, epoch_of(T0) + 14]


def test_budget_exhaustion_refuses_and_says_why(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, report_limit=10, epoch_epsilon=5.0, window_epsilon=9.0)
    for o in plain_offers(engine, 12):
        engine.record("click", context="shopping", offer=o, now=T0 - 60)
    first = drain(engine, clock, 1)
    # ε = 2 a report, 5 an epoch: a census and one engagement (4); a third would need 6
    assert len(first) == 2
    assert any("epoch budget is spent" in s for s in engine.last_report_stops)
    # next day: two more (4 + 2 = 6 and 8 of the 30-day 9); a third would need 10
    second = drain(engine, clock, 1)
    assert len(second) == 2
    later = drain(engine, clock, 5)
    assert later == []
    assert any("30-day budget is spent" in s for s in engine.last_report_stops)
    ledger = [e for e in engine.privacy_ledger() if e.kind == "report"]
    assert sum(e.epsilon for e in ledger) <= 9.0


def test_next_report_at_says_when_the_30_day_budget_frees(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, report_limit=10, epoch_epsilon=5.0, window_epsilon=9.0)
    for o in plain_offers(engine, 12):
        engine.record("click", context="shopping", offer=o, now=T0 - 60)
    assert engine.next_report_at() == clock.now()  # nothing spent yet
    drain(engine, clock, 2)  # 8 of the 30-day 9 spent, over two days
    spends = [e.t for e in engine.privacy_ledger() if e.kind == "report"]
    at = engine.next_report_at()
    # the first day's two reports age out together: then 4 of 9 are spent and one more fits
    assert at == pytest.approx(min(spends) + 30 * DAY)
    assert at > clock.now()
    clock.set(at - 1)
    assert engine.take_batch() is None
    assert any("30-day budget is spent" in s for s in engine.last_report_stops)
    clock.set(at)
    assert engine.next_report_at() == at
    batch = engine.take_batch()
    assert batch is not None and any(r["kind"] == "engagement" for r in batch.reports)


def test_next_report_at_is_now_in_central_mode(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, **CENTRAL, window_epsilon=0.1)
    for o in plain_offers(engine, 6):
        engine.record("click", context="shopping", offer=o, now=T0 - 60)
    drain(engine, clock, 3)  # the census spends the whole 30-day budget; engagements spend 0
    assert engine.next_report_at() == clock.now()


def test_memo_survives_a_restart_and_is_drawn_once(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, segment_depth=1)  # d_seg = 18: GRR
    o = plain_offers(engine, 1)[0]
    engine.record("click", context="shopping", offer=o, now=T0 - 60)
    drain(engine, clock, 1)
    memos = engine._store.query("SELECT domain, value, response FROM memos")
    assert len(memos) == 1 and memos[0][0].startswith("segment:grr:18:")
    engine.close()
    engine, clock = open_engine(tmp_path, clock=clock, segment_depth=1)
    for o in plain_offers(engine, 4):
        engine.record("click", context="shopping", offer=o, now=clock.now())
    drain(engine, clock, 3)
    assert engine._store.query("SELECT domain, value, response FROM memos") == memos
    assert [e.kind for e in engine.privacy_ledger()].count("memo") == 1


def test_central_mode_sends_the_active_segment_and_spends_no_local_epsilon(
    tmp_path: Path,
) -> None:
    engine, clock = open_engine(tmp_path, **CENTRAL)
    for o in plain_offers(engine, 2):
        engine.record("purchase", context="shopping", offer=o, now=T0 - 60)
    reports = drain(engine, clock, 1)
    eng = [r for r in reports if r["kind"] == "engagement"]
    assert eng and all(
        r["mode"] == "central"
        and r["oracle"] == "none"
        and r["epsilon"] is None
        and r["segment"] == 0
        for r in eng
    )
    census = [r for r in reports if r["kind"] == "census"]
    assert census and census[0]["mode"] == "ldp"  # the census is always LDP
    spent = {e.report: e.epsilon for e in engine.privacy_ledger() if e.kind == "report"}
    assert all(spent[r["nonce"]] == 0.0 for r in eng)


def test_forgetting_everything_starts_thirty_silent_days(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path)
    o = plain_offers(engine, 1)[0]
    engine.record("click", context="shopping", offer=o, now=T0 - 60)
    drain(engine, clock, 1)
    engine.forget(everything=True)
    assert engine.privacy_ledger() == [] and engine.outbox(include_pending=True) == []
    engine.update_settings(reporting=True, quiet_hours=None)
    for day in range(30):
        engine.record("click", context="shopping", offer=o, now=clock.now())
        assert engine.take_batch() is None, f"day {day} of the silent period sent something"
        clock.advance(DAY)
    assert engine.take_batch() is not None  # day 31


def test_a_batch_is_one_epoch_and_retries_reuse_the_nonces(tmp_path: Path) -> None:
    engine, _ = open_engine(tmp_path, report_limit=3)
    for o in plain_offers(engine, 3):
        engine.record("click", context="shopping", offer=o, now=T0 - 60)
    first = engine.take_batch()
    again = engine.take_batch()  # no acknowledgement: the same reports, same nonces
    assert first is not None and again is not None
    assert sorted(r["nonce"] for r in first.reports) == sorted(r["nonce"] for r in again.reports)
    assert len({r["epoch"] for r in first.reports}) == 1
    engine.acknowledge(again, destination="test://server")
    assert engine.take_batch() is None
    assert {r.destination for r in engine.outbox()} == {"test://server"}
    assert all(r.bytes > 0 and r.sent_at == T0 for r in engine.outbox())


# ---------------------------------------------------------------------------------------------
# No leak: random histories full of distinctive raw values never reach a payload.

_TEXT = st.text(alphabet=string.ascii_letters, min_size=12, max_size=16)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple]:
    n = draw(st.integers(1, 12))
    events = []
    for _ in range(n):
        kind = draw(
            st.sampled_from(
                ["impression", "click", "purchase", "dismiss", "view", "visit", "app_use"]
            )
        )
        lat = draw(st.floats(-60, 60, allow_nan=False)) + 0.123456789
        lon = draw(st.floats(-170, 170, allow_nan=False)) + 0.987654321
        dt = draw(st.floats(1, 86400 * 3, allow_nan=False))
        strength = draw(st.floats(0.013, 5, allow_nan=False))
        offer = draw(st.integers(0, 300))
        events.append((kind, (lat, lon), dt, strength, offer))
    return events


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories(), occupation=_TEXT)
def test_no_raw_value_ever_appears_in_a_payload(
    tmp_path_factory: pytest.TempPathFactory, history: list[tuple], occupation: str
) -> None:
    payloads = []
    nonces: list[list[str]] = []
    for device in ("a", "b"):  # two engines with identical histories
        d = tmp_path_factory.mktemp(device)
        engine, clock = open_engine(d, report_limit=5, epoch_epsilon=50.0, window_epsilon=500.0)
        engine.set_attributes(age_band="35-44", occupation=occupation, region="gh-gcp")
        offers = plain_offers(engine, 301)
        raw: list[str] = [occupation]
        for kind, loc, dt, strength, oi in history:
            kw: dict = {"context": "navigation", "strength": strength, "now": T0 - dt}
            if kind in ("impression", "click", "purchase", "dismiss", "view"):
                kw["offer"] = offers[oi]
            if kind == "app_use":
                kw["category"] = "games"
            if kind in ("visit", "view", "purchase"):
                kw["location"] = loc
            engine.record(kind, **kw)
            raw += [
                f"{loc[0]:.4f}",
                f"{loc[1]:.4f}",
                f"{loc[0]:.2f}",
                repr(T0 - dt),
                f"{T0 - dt:.0f}",
                repr(strength),
            ]
            title = engine.bundle.catalog.titles[engine.bundle.catalog.index_of(offers[oi])]
            raw.append(title)
        sent = drain(engine, clock, 4)
        catalog_ids = set(engine.bundle.catalog.ids)
        for r in sent:
            validate_report(r)
            if r["kind"] == "engagement":
                assert r["offer"] in catalog_ids
                assert not engine.bundle.catalog.sensitive[
                    engine.bundle.catalog.index_of(r["offer"])
                ]
        # `bits` is a random OUE bit vector in base64: a short letter string can occur in it by
        # chance (a run of zero bits reads "AAAA..."); its size is fixed by the domain instead.
        d_bytes = (engine.bundle.segments.d_seg + 7) // 8
        for r in sent:
            if "bits" in r:
                assert len(base64.b64decode(r["bits"])) == d_bytes
        text = json.dumps([{k: v for k, v in r.items() if k != "bits"} for r in sent])
        for value in raw:
            if len(value) >= 6 and not value.replace(".", "").replace("-", "").isdigit():
                assert value not in text, f"raw value {value!r} leaked"
            elif len(value) >= 8:
                assert value not in text, f"raw number {value!r} leaked"
        payloads.append(text)
        nonces.append([r["nonce"] for r in sent])
        engine.close()
    assert not set(nonces[0]) & set(nonces[1]), "two devices produced the same nonce"
    assert all(len(set(n)) == len(n) for n in nonces)
    assert math.isfinite(T0)


def test_forgetting_an_event_drops_its_unsent_report_but_not_the_spent_epsilon(
    tmp_path: Path,
) -> None:
    engine, _ = open_engine(tmp_path)
    a, b = plain_offers(engine, 2)
    ea = engine.record("click", context="shopping", offer=a, now=T0 - 60)
    engine.record("click", context="shopping", offer=b, now=T0 - 60)
    batch = engine.take_batch()  # made, not sent
    assert batch is not None and {r.get("offer") for r in batch.reports} >= {a, b}
    spent = sum(e.epsilon for e in engine.privacy_ledger())
    engine.forget([ea])
    offers = {r.payload.get("offer") for r in engine.outbox(include_pending=True)}
    assert a not in offers and b in offers
    assert sum(e.epsilon for e in engine.privacy_ledger()) == spent


def test_forgetting_everything_keeps_only_the_wish_to_be_left_alone(tmp_path: Path) -> None:
    engine, _ = open_engine(tmp_path)
    engine.update_settings(
        level="off",
        quiet_hours=(21, 8),
        daily_cap=5,
        timezone="Europe/Paris",
        sensitive_opt_ins=["health"],
    )
    engine.forget(everything=True)
    s = engine.settings
    assert (s.level, s.quiet_hours, s.daily_cap) == ("off", (21, 8), 5)
    assert s.timezone == "UTC" and s.sensitive_opt_ins == () and s.reporting is False
