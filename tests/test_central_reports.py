"""Central mode's device-level guarantee, on the device: the accountant enforces the caps the
server's continual release is calibrated to (L per epoch, W per 30 days, each offer once ever)
and its ledger records each report's share of the 30-day ρ (docs/privacy.md)."""

from __future__ import annotations

import json
from pathlib import Path

from localrank.device.reports import validate_batch
from localrank.device.reports.accountant import Accountant
from localrank.privacy.continual import census_rho
from report_fixtures import CENTRAL, T0, open_engine, plain_offers

DAY = 86400.0


def drain(engine, clock, days: int) -> list[dict]:
    """Send every due batch for ``days`` epochs; returns the engagement reports that left."""
    sent: list[dict] = []
    for _ in range(days):
        while (batch := engine.take_batch()) is not None:
            validate_batch(json.loads(batch.body))
            sent.extend(r for r in batch.reports if r["kind"] == "engagement")
            engine.acknowledge(batch, destination="test://server")
        clock.advance(DAY)
    return sent


def test_a_device_past_the_window_cap_is_refused_by_its_own_accountant(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, **CENTRAL, report_limit=3, central_window_reports=5)
    guarantee = engine.bundle.config.central_guarantee
    assert guarantee is not None and guarantee.reports_per_window == 5
    offers = plain_offers(engine, 12)
    for o in offers:
        engine.record("click", context="shopping", offer=o, now=T0 - 60)
    first_day = clock.now()
    sent = drain(engine, clock, 10)
    # L = 3 on the first day, the last 2 of W = 5 on the second, then nothing for the window
    assert len(sent) == 5
    assert {r["offer"] for r in sent} == set(offers[:5])  # a batch is shuffled
    assert any("W = 5" in why for why in engine.last_report_stops), engine.last_report_stops
    with engine._store.transaction() as db:
        why = Accountant.central_refusal(db, guarantee, clock.now())
    assert why is not None and "30-day cap" in why and "W = 5" in why
    # the window frees when the first day's reports age out, not before
    assert engine.next_report_at() == first_day + 30 * DAY
    assert drain(engine, clock, 30 - 10) == []
    # then the window slides: the first day's 3 free on day 30, the second day's 2 on day 31
    slid = drain(engine, clock, 1)
    assert len(slid) == 3
    later = drain(engine, clock, 5)
    assert len(later) == 2
    assert len({r["offer"] for r in sent + slid + later}) == 10  # each offer once


def test_the_second_report_of_an_offer_is_never_made(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, **CENTRAL, report_limit=3)
    o, other = plain_offers(engine, 2)
    engine.record("impression", context="shopping", offer=o, now=T0 - 120)
    engine.record("purchase", context="shopping", offer=o, now=T0 - 60)
    sent = drain(engine, clock, 2)
    assert [(r["offer"], r["event"]) for r in sent] == [(o, "impression")]
    # later events about the same offer, in later windows and after a restart, stay home
    engine.record("click", context="shopping", offer=o, now=clock.now())
    sent += drain(engine, clock, 40)
    engine.close()
    engine, clock = open_engine(tmp_path, clock=clock, **CENTRAL, report_limit=3)
    engine.record("purchase", context="shopping", offer=o, now=clock.now())
    engine.record("click", context="shopping", offer=other, now=clock.now())
    sent += drain(engine, clock, 2)
    assert sorted(r["offer"] for r in sent) == sorted([o, other])
    assert engine.report_backlog() == 0  # dropped for good, not waiting


def test_the_ledger_records_each_central_reports_share_of_rho(tmp_path: Path) -> None:
    engine, clock = open_engine(tmp_path, **CENTRAL, report_limit=3)
    guarantee = engine.bundle.config.central_guarantee
    assert guarantee is not None
    for o in plain_offers(engine, 3):
        engine.record("click", context="shopping", offer=o, now=T0 - 60)
    sent = drain(engine, clock, 1)
    ledger = {e.report: e for e in engine.privacy_ledger() if e.kind == "report"}
    assert len(sent) == 3
    for r in sent:
        line = ledger.pop(r["nonce"])
        assert line.epsilon == 0.0  # no local ε ...
        # ... but 1/W of what the mechanism spends
        assert line.rho == guarantee.rho_engagement / guarantee.reports_per_window
        assert f"{guarantee.epsilon_window:.3g}" in line.note
    (census,) = ledger.values()  # the census, LDP at ε = 0.1: ε²/2 of the same budget
    assert census.epsilon == 0.1 and census.rho == census_rho(0.1, 1)
    # a full window of reports and its census fit the published ρ exactly
    total = guarantee.reports_per_window * guarantee.rho_per_report + guarantee.rho_census
    assert abs(total - guarantee.rho_window) < 1e-12
    exported = engine.export()["privacy_ledger"]
    assert sorted(e["rho"] for e in exported if e["kind"] == "report") == sorted(
        [guarantee.rho_per_report] * 3 + [census.rho]
    )


def test_forgetting_one_event_keeps_the_offer_barred_and_everything_wipes_the_list(
    tmp_path: Path,
) -> None:
    engine, clock = open_engine(tmp_path, **CENTRAL, report_limit=3)
    o = plain_offers(engine, 1)[0]
    event = engine.record("click", context="shopping", offer=o, now=T0 - 60)
    assert len(drain(engine, clock, 1)) == 1
    engine.forget([event])  # the report left already: the rule must still hold for it
    engine.record("click", context="shopping", offer=o, now=clock.now())
    assert drain(engine, clock, 2) == []
    with engine._store.transaction() as db:
        assert Accountant.already_reported(db, o)
    engine.forget(everything=True)  # the list says which offers the user engaged with
    with engine._store.transaction() as db:
        assert not Accountant.already_reported(db, o)
        assert Accountant.central_made(db, clock.now()) == (0, 0)
