"""Contracts (channel.md, Contracts): signed, amended (versions), renewed, terminated, expired; in force on a day."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest

from domain.contract import Contract
from domain.errors import AlreadyExists, InvalidTransition, NotFound, ReasonRequired, UnknownPartner, ValidationFailed
from tests.unit.conftest import ADMIN, CONTRACT_END, CONTRACT_START, PLAN_ID, T0, World, at, event_names, state_of


def sign(**changes: Any) -> Contract:
    fields: dict[str, Any] = {
        "contract_id": "C-1",
        "partner_id": "P-1",
        "starts_on": CONTRACT_START,
        "ends_on": CONTRACT_END,
        "auto_renew": False,
        "territory": ["vn", "LA", "VN"],
        "terms": "doc://contracts/C-1/v1",
        "commission_plan_id": PLAN_ID,
        "actor": ADMIN,
        "at": T0,
    }
    fields.update(changes)
    return Contract.sign(**fields)


def day(text: str) -> date:
    return date.fromisoformat(text)


# ------------------------------------------------------------------ signing


def test_sign_records_signed_with_a_normalised_territory() -> None:
    contract = sign()
    events = contract.collect_events()
    assert event_names(events) == ["Signed"]
    assert events[0].partner_id == "P-1"
    assert contract.status == "signed"
    assert contract.territory == ["LA", "VN"]
    assert contract.terms_version == 1
    assert contract.signed_at == T0
    assert contract.id == Contract.id_for("C-1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ends_on": CONTRACT_START}, "a contract must end after it starts"),
        ({"ends_on": CONTRACT_START - timedelta(days=1)}, "a contract must end after it starts"),
        ({"territory": ["Vietnam"]}, "territory entry 'Vietnam' is not an ISO country code"),
        ({"territory": ["V1"]}, "is not an ISO country code"),
        ({"terms": " "}, "terms is required"),
        ({"commission_plan_id": ""}, "commission_plan_id is required"),
        ({"contract_id": ""}, "contract_id is required"),
        ({"actor": ""}, "actor is required"),
    ],
)
def test_sign_refuses_invalid_contracts(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        sign(**changes)


def test_sign_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        sign(at=datetime(2026, 1, 5))


# ------------------------------------------------------------------ amendments


def test_amendments_are_numbered_versions() -> None:
    contract = sign()
    contract.collect_events()

    contract.amend(actor=ADMIN, reason="new price list", at=at(10), terms="doc://contracts/C-1/v2")
    contract.amend(actor=ADMIN, reason="expansion", at=at(20), territory=["kh"])
    contract.amend(actor=ADMIN, reason="new plan", at=at(30), commission_plan_id="PLAN-2027")

    events = contract.collect_events()
    assert event_names(events) == ["Amended", "Amended", "Amended"]
    assert [e.terms_version for e in events] == [2, 3, 4]
    assert events[1].terms == "doc://contracts/C-1/v2"  # unchanged parts carried over
    assert events[2].territory == ["KH"]
    assert contract.terms_version == 4
    assert (contract.terms, contract.territory, contract.commission_plan_id) == (
        "doc://contracts/C-1/v2",
        ["KH"],
        "PLAN-2027",
    )
    assert contract.ends_on == CONTRACT_END


def test_an_amendment_must_change_something_and_give_a_reason() -> None:
    contract = sign()
    contract.collect_events()
    with pytest.raises(ValidationFailed, match="an amendment must change the terms, the territory or the plan"):
        contract.amend(actor=ADMIN, reason="nothing", at=at(1))
    with pytest.raises(ReasonRequired, match="a reason is required to amend a contract"):
        contract.amend(actor=ADMIN, reason="", at=at(1), terms="v2")
    with pytest.raises(ValidationFailed, match="actor is required"):
        contract.amend(actor="", reason="why", at=at(1), terms="v2")
    with pytest.raises(ValidationFailed, match="not an ISO country code"):
        contract.amend(actor=ADMIN, reason="why", at=at(1), territory=["Laos"])
    assert contract.collect_events() == []
    assert contract.terms_version == 1


# ------------------------------------------------------------------ renewal


def test_renewal_to_an_explicit_end() -> None:
    contract = sign()
    contract.collect_events()
    contract.renew(actor=ADMIN, at=at(300), ends_on=day("2027-06-30"))
    events = contract.collect_events()
    assert event_names(events) == ["Renewed"]
    assert (events[0].previous_ends_on, events[0].ends_on, events[0].automatic) == (
        CONTRACT_END,
        day("2027-06-30"),
        False,
    )
    assert contract.ends_on == day("2027-06-30")
    assert contract.in_force_on(day("2027-06-30"))
    assert not contract.in_force_on(day("2027-07-01"))


def test_renewal_without_an_end_renews_for_the_same_length_every_time() -> None:
    contract = sign()  # 2026-01-01 .. 2026-12-31 inclusive: one year
    contract.renew(actor=ADMIN, at=at(300))
    assert contract.ends_on == day("2027-12-31")
    contract.renew(actor=ADMIN, at=at(600), automatic=True)
    assert contract.ends_on == day("2028-12-30")  # 2028 is a leap year: the same 365 days
    quarter = sign(contract_id="C-Q", starts_on=day("2026-01-01"), ends_on=day("2026-01-10"))
    quarter.renew(actor=ADMIN, at=at(5))
    quarter.renew(actor=ADMIN, at=at(15))
    quarter.renew(actor=ADMIN, at=at(25))
    assert quarter.ends_on == day("2026-02-09")  # three more periods of 10 days


def test_a_renewal_must_move_the_end_later() -> None:
    contract = sign()
    contract.collect_events()
    with pytest.raises(ValidationFailed, match="a renewal must move the end date later"):
        contract.renew(actor=ADMIN, at=at(1), ends_on=CONTRACT_END)
    with pytest.raises(ValidationFailed, match="actor is required"):
        contract.renew(actor="", at=at(1), ends_on=day("2027-12-31"))
    assert contract.collect_events() == []
    assert contract.ends_on == CONTRACT_END


# ------------------------------------------------------------------ termination and expiry


def test_termination_ends_the_contract_on_its_effective_day() -> None:
    contract = sign()
    contract.collect_events()
    contract.terminate(actor=ADMIN, reason="partner terminated", effective_on=day("2026-06-15"), at=at(150))
    events = contract.collect_events()
    assert event_names(events) == ["Terminated"]
    assert contract.status == "terminated"
    assert contract.terminated_on == day("2026-06-15")
    assert contract.in_force_on(day("2026-06-14"))
    assert not contract.in_force_on(day("2026-06-15"))
    assert not contract.in_force_on(day("2026-12-31"))


def test_termination_effective_after_the_end_does_not_extend_the_contract() -> None:
    contract = sign(ends_on=day("2026-06-30"))
    contract.terminate(actor=ADMIN, reason="notice period", effective_on=day("2026-12-31"), at=at(100))
    assert contract.in_force_on(day("2026-06-30"))
    assert not contract.in_force_on(day("2026-07-01"))
    assert not contract.in_force_on(day("2026-09-01"))


def test_terminating_an_auto_renewing_contract_stops_the_renewals() -> None:
    contract = sign(auto_renew=True)
    contract.terminate(actor=ADMIN, reason="partner left", effective_on=day("2028-03-01"), at=at(700))
    assert contract.in_force_on(day("2028-02-29"))
    assert not contract.in_force_on(day("2028-03-01"))


def test_termination_requires_a_reason_and_an_actor() -> None:
    contract = sign()
    contract.collect_events()
    with pytest.raises(ReasonRequired, match="a reason is required to terminate a contract"):
        contract.terminate(actor=ADMIN, reason=" ", effective_on=day("2026-06-15"), at=at(1))
    with pytest.raises(ValidationFailed, match="actor is required"):
        contract.terminate(actor="", reason="why", effective_on=day("2026-06-15"), at=at(1))
    assert contract.collect_events() == []
    assert contract.status == "signed"


def test_expiry_after_the_end() -> None:
    contract = sign()
    contract.collect_events()
    with pytest.raises(InvalidTransition, match="contract C-1 runs until 2026-12-31"):
        contract.expire(actor="scheduler", at=datetime.fromisoformat("2026-12-31T23:59:59+00:00"))
    contract.expire(actor="scheduler", at=datetime.fromisoformat("2027-01-01T00:00:00+00:00"))
    events = contract.collect_events()
    assert event_names(events) == ["Expired"]
    assert events[0].ended_on == CONTRACT_END
    assert contract.status == "expired"
    assert contract.in_force_on(CONTRACT_END)
    assert not contract.in_force_on(day("2027-01-01"))


def test_an_auto_renewing_contract_does_not_expire() -> None:
    contract = sign(auto_renew=True)
    with pytest.raises(InvalidTransition, match="renews automatically; terminate it instead"):
        contract.expire(actor="scheduler", at=at(2000))
    assert contract.status == "signed"


@pytest.mark.parametrize("closing", ["terminate", "expire"])
def test_a_closed_contract_refuses_every_command(closing: str) -> None:
    contract = sign()
    if closing == "terminate":
        contract.terminate(actor=ADMIN, reason="breach", effective_on=day("2026-03-01"), at=at(40))
        status = "terminated"
    else:
        contract.expire(actor="scheduler", at=at(400))
        status = "expired"
    contract.collect_events()
    before = state_of(contract)
    with pytest.raises(InvalidTransition, match=f"cannot amend contract C-1: it is {status}"):
        contract.amend(actor=ADMIN, reason="r", at=at(500), terms="v2")
    with pytest.raises(InvalidTransition, match=f"cannot renew contract C-1: it is {status}"):
        contract.renew(actor=ADMIN, at=at(500))
    with pytest.raises(InvalidTransition, match=f"cannot terminate contract C-1: it is {status}"):
        contract.terminate(actor=ADMIN, reason="r", effective_on=day("2027-03-01"), at=at(500))
    with pytest.raises(InvalidTransition, match=f"cannot expire contract C-1: it is {status}"):
        contract.expire(actor=ADMIN, at=at(500))
    assert contract.collect_events() == []
    assert state_of(contract) == before


# ------------------------------------------------------------------ in force


@pytest.mark.parametrize(
    ("auto_renew", "on", "expected"),
    [
        (False, "2025-12-31", False),
        (False, "2026-01-01", True),
        (False, "2026-07-15", True),
        (False, "2026-12-31", True),
        (False, "2027-01-01", False),
        (True, "2025-12-31", False),
        (True, "2026-01-01", True),
        (True, "2027-01-01", True),  # renewed automatically, recorded or not
        (True, "2031-06-01", True),
    ],
)
def test_in_force_on(auto_renew: bool, on: str, expected: bool) -> None:
    assert sign(auto_renew=auto_renew).in_force_on(day(on)) is expected


def test_covers_country() -> None:
    contract = sign(territory=["VN"])
    assert contract.covers_country("vn")
    assert not contract.covers_country("TH")
    assert not contract.covers_country(None)
    assert sign(territory=[]).covers_country("TH")  # no territory: everywhere


# ------------------------------------------------------------------ through the application


def test_contract_lifecycle_through_the_application(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1", auto_renew=False)
    contract_id = "C-P-1"

    amended = app.amend_contract(contract_id, actor=ADMIN, reason="new price list", terms="v2", at=at(10))
    assert amended.events == ["prm.contract.amended.v1"]
    renewed = app.renew_contract(contract_id, actor=ADMIN, at=at(300))
    assert renewed.events == ["prm.contract.renewed.v1"]
    assert app.contract(contract_id).ends_on == day("2027-12-31")
    expired = app.expire_contract(contract_id, actor="scheduler", at=datetime.fromisoformat("2028-01-01T00:00+00:00"))
    assert expired.events == ["prm.contract.expired.v1"]

    contract = app.contract(contract_id)
    assert (contract.status, contract.terms_version, contract.terms) == ("expired", 2, "v2")
    assert isinstance(contract.starts_on, date)
    assert contract.starts_on == CONTRACT_START
    assert app.partner("P-1").contract_ids == [contract_id]


def test_terminate_through_the_application_defaults_to_the_day_of_the_command(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    result = app.terminate_contract("C-P-1", actor=ADMIN, reason="breach", at=at(30))
    assert result.events == ["prm.contract.terminated.v1"]
    assert app.contract("C-P-1").terminated_on == at(30).date()


def test_application_refusals(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    with pytest.raises(AlreadyExists, match="contract C-P-1 already exists"):
        unit_world.sign("P-1", "C-P-1", when=at(1))
    with pytest.raises(UnknownPartner, match="unknown partner 'P-404'"):
        unit_world.sign("P-404", "C-9", when=at(1))
    with pytest.raises(NotFound, match="unknown commission plan 'PLAN-404'"):
        app.sign_contract(
            contract_id="C-2",
            partner_id="P-1",
            starts_on=CONTRACT_START,
            ends_on=CONTRACT_END,
            auto_renew=False,
            territory=["VN"],
            terms="t",
            commission_plan_id="PLAN-404",
            actor=ADMIN,
            at=at(1),
        )
    with pytest.raises(NotFound, match="unknown commission plan 'PLAN-404'"):
        app.amend_contract("C-P-1", actor=ADMIN, reason="r", commission_plan_id="PLAN-404", at=at(1))
    with pytest.raises(NotFound, match="unknown contract 'C-404'"):
        app.renew_contract("C-404", actor=ADMIN, at=at(1))
    with pytest.raises(ValidationFailed, match="a contract must end after it starts"):
        unit_world.sign("P-1", "C-3", when=at(1), starts_on=CONTRACT_END, ends_on=CONTRACT_START)
    assert app.partner("P-1").contract_ids == ["C-P-1"]  # the refused contract was not attached


def test_a_second_contract_can_be_signed_and_a_contract_round_trips(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    unit_world.sign("P-1", "C-2027", when=at(350), starts_on=day("2027-01-01"), ends_on=day("2027-12-31"))
    assert app.partner("P-1").contract_ids == ["C-P-1", "C-2027"]

    contract = sign(contract_id="C-RT", auto_renew=True)
    contract.amend(actor=ADMIN, reason="r", at=at(1), territory=["th"])
    contract.renew(actor=ADMIN, at=at(2), ends_on=day("2028-12-31"))
    contract.terminate(actor=ADMIN, reason="r", effective_on=day("2028-06-30"), at=at(3))
    app.save(contract)
    assert state_of(app.contract("C-RT")) == state_of(contract)
